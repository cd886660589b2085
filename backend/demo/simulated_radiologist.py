"""The simulated radiologist of the benchmarks and `samx demo`: names clusters through the same decision
service the web page uses, looking at each cluster's true regions.

It names a cluster by its majority region when at least ``purity`` of it agrees, merging it
into the cluster already named with that region (the overview lets one select several
clusters of one region and merge them in one decision); splits a mixed cluster in two and looks
at the halves again (at most twice); discards what is still mixed after that."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass
class Naming:
    decisions: Counter = field(default_factory=Counter)
    named_clusters: int = 0  # clusters that got a name (before merging)


def name_clusters(db, run_id: int, region_of: dict[int, str], user, purity: float = 0.8) -> Naming:
    from sqlalchemy import select

    from backend.clusters.decisions import decide
    from backend.database.schema import Cluster, ClusterMembership, DecisionAction, Label, LabelKind

    with db.session() as s:
        label_id = dict(s.execute(select(Label.name, Label.id).where(Label.kind == LabelKind.region)).all())
        queue = [(c.id, 0) for c in s.scalars(select(Cluster).where(Cluster.run_id == run_id)
                                                .order_by(Cluster.size.desc()))]

    def members(cid: int) -> list[str]:
        with db.session() as s:
            ids = s.scalars(select(ClusterMembership.image_id).where(ClusterMembership.cluster_id == cid)).all()
        return [region_of[i] for i in ids]

    out = Naming()
    to_region: dict[str, list[int]] = defaultdict(list)
    while queue:
        cid, depth = queue.pop(0)
        regions = members(cid)
        if not regions:
            continue
        region, count = Counter(regions).most_common(1)[0]
        if count / len(regions) >= purity:
            to_region[region].append(cid)
        elif depth < 2 and len(regions) >= 2:
            r = decide(db, DecisionAction.split, cid, user, k=2)
            out.decisions[DecisionAction.split.value] += 1
            queue += [(ch["id"], depth + 1) for ch in r["children"]]
        else:
            decide(db, DecisionAction.discard, cid, user)
            out.decisions[DecisionAction.discard.value] += 1
    for region, cids in to_region.items():
        decide(db, DecisionAction.name, cids[0], user, label_id=label_id[region])
        out.decisions[DecisionAction.name.value] += 1
        if len(cids) > 1:
            decide(db, DecisionAction.merge, cids[0], user, sources=cids[1:])
            out.decisions[DecisionAction.merge.value] += 1
    out.named_clusters = sum(len(v) for v in to_region.values())
    return out
