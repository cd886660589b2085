"""The machine-learning layer behind Label Studio: lesion detector, normal/abnormal classifier,
their decision fusion, active-learning ranking and the papers' metrics. Plain arrays in, plain
data out; the database and the web server live in backend/."""
