"""Dataset writers and readers (COCO, Pascal VOC, YOLO): plain records in, files out.

Nothing here touches the database: ``backend/export_job.py`` streams records from it and
``backend/dataset_import.py`` stores what the readers return."""
