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
