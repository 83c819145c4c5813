"""CPU thread planning of model actors (selva_ray.runtime): no Ray needed."""

from __future__ import annotations

import os

import torch

from selva_ray import runtime


def test_cores_are_split_between_the_model_actors_that_compute_at_once():
    cores = runtime.node_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert runtime.cpu_threads(1) == cores  # a generator alone gets every core
    assert runtime.cpu_threads(2) == max(1, cores // 2)  # encoder + generator
    assert runtime.cpu_threads(10 * cores) == 1  # never zero
    assert runtime.cpu_threads(0) == cores


def test_threads_are_set_on_cpu_only():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        runtime.use_cpu_threads("cuda", 1)
        assert torch.get_num_threads() == 1
        runtime.use_cpu_threads("cpu", None)
        assert torch.get_num_threads() == 1
        runtime.use_cpu_threads("cpu", 1)
        assert torch.get_num_threads() == runtime.node_cores()
    finally:
        torch.set_num_threads(before)


def test_cpu_generator_batches_give_every_actor_two_unless_the_size_is_given():
    from selva_ray.generate.batching import batch_size_for as _batch_size
    from selva_ray.generate.config import DEFAULT_BATCH, GenerateConfig
    from selva_ray.runner.plan import ActorPlan

    cpu = ActorPlan("generator", 2, 0.0, 1.0, 1 << 30, "cpu", 1, 2)
    gpu = ActorPlan("generator", 2, 1.0, 1.0, 1 << 30, "cuda", 2, None)
    auto = GenerateConfig(input="in", output="out")
    assert auto.batch_size is None
    assert _batch_size(auto, cpu, 16) == 4  # 4 batches: two per actor
    assert _batch_size(auto, cpu, 11) == 3
    assert _batch_size(auto, cpu, 1) == 1
    assert _batch_size(auto, cpu, 1000) == DEFAULT_BATCH == 8  # never above the default
    assert _batch_size(auto, gpu, 16) == DEFAULT_BATCH  # GPUs want full batches
    given = GenerateConfig(input="in", output="out", batch_size=8)
    assert _batch_size(given, cpu, 16) == 8  # an explicit --batch-size is kept
