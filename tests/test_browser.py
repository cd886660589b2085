"""The cluster page in a real browser (Debian's headless Chromium via Selenium) against the real
threaded werkzeug server: keyboard naming, merge, split, undo, the viewer, and a second
radiologist on a stale page seeing the conflict message. The database is checked after each step.
Screenshots go to test-artifacts/."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from backend.database.schema import Cluster, ClusterDecision, ClusterMembership, LabelSource, WeakLabel
from backend.web import create_app
from tests.browser_fixtures import ARTIFACTS, wait
from tests.factories import TEST_PASSWORD


@pytest.fixture
def live(cluster_world):
    """The real app on the real (threaded) werkzeug server, on a free port."""
    from werkzeug.serving import make_server

    app = create_app(cluster_world["settings"])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    app.extensions["samx.db"].dispose()


def by_id(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def login(driver, base, username):
    driver.get(base + "/login")
    by_id(driver, "username").send_keys(username)
    by_id(driver, "password").send_keys(TEST_PASSWORD)
    by_id(driver, "login-submit").click()
    wait(driver, lambda d: by_id(d, "whoami").text == username, message=f"{username} not logged in")


def open_cluster(driver, base, cluster_id):
    driver.get(f"{base}/clusters/{cluster_id}")
    return wait(driver, lambda d: by_id(d, "cluster").get_dom_attribute("data-version"))


def wait_version(driver, expected: int, what: str):
    """A decision reloads the page; wait for the page showing the new version."""
    wait(driver, lambda d: by_id(d, "cluster").get_dom_attribute("data-version") == str(expected),
         message=f"page did not reload after {what}: {_message(driver)}")


def _message(driver) -> str:
    try:
        return by_id(driver, "message").text
    except Exception:  # noqa: BLE001
        return "(no message)"


def keys(driver, *sequence):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*sequence).perform()


def cluster_row(db, cid):
    with db.session() as s:
        c = s.get(Cluster, cid)
        return None if c is None else (c.status, c.label_id, c.size, c.version)


def current_labels(db, cid):
    with db.session() as s:
        return s.execute(select(WeakLabel.label_id, WeakLabel.source).join(
            ClusterMembership, ClusterMembership.image_id == WeakLabel.image_id)
            .where(ClusterMembership.cluster_id == cid, WeakLabel.superseded_at.is_(None))).all()


@pytest.mark.slow
def test_radiologist_names_merges_splits_and_undoes(chrome, live, cluster_world):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    db, (a, b, c), L, run = cluster_world["db"], cluster_world["c"], cluster_world["L"], cluster_world["run"]
    ARTIFACTS.mkdir(exist_ok=True)
    one = chrome()
    login(one, live, "rad1")

    # the overview: cards with montages and the map
    one.get(f"{live}/runs/{run}")
    wait(one, lambda d: d.find_element(By.ID, "umap").get_attribute("data-points") == "21", message="map not drawn")
    wait(one, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('.cluster-card img')).every(i => i.complete && i.naturalWidth > 0)"),
        message="montages did not load")
    assert len(one.find_elements(By.CSS_SELECTOR, ".cluster-card")) == 3
    one.save_screenshot(str(ARTIFACTS / "overview.png"))

    # a second radiologist opens the same cluster now, and will act on this (soon stale) page
    two = chrome()
    login(two, live, "rad2")
    assert open_cluster(two, live, a) == "1"

    # rad1 names cluster a with the keyboard: "/" focuses the picker, type-ahead, Enter
    assert open_cluster(one, live, a) == "1"
    wait(one, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#grid img')).every(i => i.complete && i.naturalWidth > 0)"),
        message="thumbnails did not load")
    one.save_screenshot(str(ARTIFACTS / "cluster.png"))
    keys(one, "/")
    assert one.switch_to.active_element.get_attribute("id") == "label-filter"
    keys(one, "kne")
    assert one.find_element(By.CSS_SELECTOR, "#label-list li.active").get_attribute("data-name") == "knee"
    keys(one, Keys.ENTER)
    wait_version(one, 2, "naming")
    assert by_id(one, "status").text == "named" and by_id(one, "cluster-label").text == "knee"
    assert "Named cluster #0 'knee'" in by_id(one, "message").text
    assert cluster_row(db, a)[:3] == ("named", L["knee"], 12)
    assert set(current_labels(db, a)) == {(L["knee"], LabelSource.cluster)} and len(current_labels(db, a)) == 12

    # rad2's page is stale: discarding with "d" shows who changed it, and changes nothing
    two.execute_script("document.activeElement && document.activeElement.blur()")
    keys(two, "d")
    wait(two, lambda d: "conflict" in by_id(d, "message").get_attribute("class"), message="no conflict shown")
    text = by_id(two, "message").text
    assert text.startswith("rad1 named this cluster 'knee' at ") and "reload to see it" in text
    two.save_screenshot(str(ARTIFACTS / "conflict.png"))
    assert cluster_row(db, a)[:3] == ("named", L["knee"], 12)
    with db.session() as s:
        assert s.scalars(select(ClusterDecision.action)).all() == ["name"]  # rad2's discard left nothing

    # the viewer: click a thumbnail, drag to change the window, Esc closes
    one.find_element(By.CSS_SELECTOR, "#grid .thumb img").click()
    wait(one, lambda d: d.execute_script("const i = document.getElementById('viewer-img');"
                                         "return !document.getElementById('viewer').hidden && i.complete && i.naturalWidth > 0"),
         message="viewer did not show the image")
    before = by_id(one, "viewer-window").text
    assert before.startswith("centre ")
    ActionChains(one).move_to_element(by_id(one, "viewer-img")).click_and_hold().move_by_offset(120, 40).release().perform()
    wait(one, lambda d: by_id(d, "viewer-window").text != before, message="dragging did not change the window")
    keys(one, Keys.ESCAPE)
    wait(one, lambda d: not by_id(d, "viewer").is_displayed())

    # move two selected images to "hand" by hand (shift-click selects the range)
    boxes = one.find_elements(By.CSS_SELECTOR, "#grid .thumb .sel")
    boxes[0].click()
    ActionChains(one).key_down(Keys.SHIFT).click(boxes[1]).key_up(Keys.SHIFT).perform()
    assert by_id(one, "sel-count").text == "2"
    one.find_element(By.CSS_SELECTOR, f"#move-target option[value='{L['hand']}']").click()
    by_id(one, "move-btn").click()
    wait_version(one, 3, "moving")
    assert sorted(current_labels(db, a)) == sorted([(L["hand"], LabelSource.manual)] * 2 + [(L["knee"], LabelSource.cluster)] * 10)

    # merge cluster b into a
    one.find_element(By.CSS_SELECTOR, f".merge-pick[value='{b}']").click()
    by_id(one, "merge-btn").click()
    wait_version(one, 4, "merging")
    assert cluster_row(db, a)[:3] == ("named", L["knee"], 17)
    assert cluster_row(db, b)[:3] == ("merged", None, 0)
    labels = current_labels(db, a)
    assert len(labels) == 17 and labels.count((L["knee"], LabelSource.cluster)) == 15

    # split cluster c into 2
    open_cluster(one, live, c)
    split_k = by_id(one, "split-k")
    split_k.clear()
    split_k.send_keys("2")
    by_id(one, "split-btn").click()
    wait_version(one, 2, "splitting")
    assert "Split into" in by_id(one, "children").text
    with db.session() as s:
        kids = s.scalars(select(Cluster).where(Cluster.parent_id == c)).all()
        assert len(kids) == 2 and sum(k.size for k in kids) == 4
        assert s.scalar(select(func.count()).select_from(ClusterMembership).where(ClusterMembership.cluster_id == c)) == 0
    assert cluster_row(db, c)[0] == "split"

    # undo the split with "u"
    keys(one, "u")
    wait_version(one, 3, "undoing")
    assert by_id(one, "status").text == "open"
    assert cluster_row(db, c)[:3] == ("open", None, 4)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Cluster).where(Cluster.parent_id == c)) == 0

    # and undo the merge on a: b comes back
    open_cluster(one, live, a)
    keys(one, "u")
    wait_version(one, 5, "undoing the merge")
    assert cluster_row(db, a)[:3] == ("named", L["knee"], 12)
    assert cluster_row(db, b)[:3] == ("open", None, 5)
    assert current_labels(db, b) == []
