"""Attention-head pruning of a DiT (arXiv 2511.03202, Section 6.2): Algorithm 2's head importance (`importance`),
Algorithm 1's masks and their baselines (`masks`), and head surgery: masks, the physically smaller model, the
gated model as a function (`surgery`), and the swap test's sampler (`swap`)."""
from diffmem.pruning.importance import (TIME_DISTS, TimeDist, batch_loss, draw_batch, evaluate_masks, head_importance,
                                        importance_many, normalize_per_layer)
from diffmem.pruning.masks import global_rank, magnitude_scores, num_pruned, one_shot_mask, prune_mask, random_mask
from diffmem.pruning.swap import swap_batch_fn, swap_sample
from diffmem.pruning.surgery import (check_mask, export_pruned, head_output_slices, head_proj_norms, head_valid_mask,
                                     jitted_apply, make_masked_apply, param_count, remove_heads, variables)
