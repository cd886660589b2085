"""Dataset writers and readers (COCO, Pascal VOC, YOLO): plain records in, files out.

Nothing here touches the database: ``backend/datasets/export.py`` streams records from it and
``backend/datasets/importer.py`` stores what the readers return."""
