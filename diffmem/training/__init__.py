"""Training: optimizer and train state (`state`), the one host loop and single-model `train` (`loop`), and vmapped
sweeps through that same loop (`sweep`)."""
from diffmem.config import RESUMABLE_TRAIN_FIELDS, TrainConfig
from diffmem.training.loop import LOG_SECONDS, MAX_STEPS_IN_FLIGHT, MetricWriter, host_loop, read_metrics, replicate, train
from diffmem.training.state import (DEFAULT_TIME_EDGES, TrainState, init_state, kernel_mask, make_optimizer,
                                    make_schedule, make_train_step, summarize_metrics, time_bin_stats, uniform_batch)
from diffmem.training.sweep import (init_members, init_states, make_member_step, make_sweep_runner, mask_counts,
                                    masked_batch,
                                    pad_datasets, train_members, train_sweep, unstack)
