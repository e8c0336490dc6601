"""Evaluation: nearest neighbours and memorization (`neighbors`), FD / KID / precision-recall (`distribution`),
feature extractors (`features`), the image evaluation set-up (`images`) and claims with intervals
(`statistics`)."""
from diffmem.eval.distribution import feature_metrics, frechet_distance, kid, precision_recall
from diffmem.eval.neighbors import DEFAULT_CHUNK, knn, memorization, top2_neighbors, top2_neighbors_sharded
