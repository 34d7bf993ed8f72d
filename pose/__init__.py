"""pose: the Ray-free library behind pose-jobs (formats, geometry, models, metrics).

Everything here is plain numpy / torch / pyarrow so that it runs, and can be tested, without a
cluster. The Ray wiring lives in the sibling package `jobs`.
"""
