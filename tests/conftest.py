"""Suite-wide settings: deterministic CPU torch, and no network for hub libraries."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# The models under test are small: one intra-op thread avoids oversubscribing the 2-core CI
# machine while Ray workers (separate processes) run beside the test process.
torch.set_num_threads(1)

import pytest  # noqa: E402
from ray_head import MACHINE_CPUS  # noqa: E402

# One local Ray cluster shared by the modules that need no cluster of their own: starting one
# costs 5-20 s on this machine. A module that needs its own (several nodes, declared GPUs, a
# job-submission head) shuts the shared one down first; the next module that asks for it
# starts it again. It declares the machine's real cores, no more: a cluster with more logical
# CPUs than cores runs plans a user's machine would not (more model actors, a worker group
# that would not fit) and can hide a hang. The jobs' plans are also tested by running the
# commands themselves (tests/test_doc_commands.py), on the private cluster each starts.


def ensure_shared_ray() -> str:
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never a cluster another process started on this machine
            num_cpus=MACHINE_CPUS,
            object_store_memory=400 * 1024 * 1024,
            include_dashboard=False,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def shared_ray() -> str:
    """The shared cluster's address (started now if this module is the first to need it)."""
    return ensure_shared_ray()


# The suite runs on several processes (`-n` in pyproject's addopts, pytest-xdist), a module
# whole on one of them (`--dist loadfile`: its module fixtures and Ray cluster stay in one
# process): two on the 2-core machine (with three, the same work took 10 % more CPU time and
# the run was no shorter). The longest modules start first (longest processing time first, by
# the times of a full run on the 2-core machine), so that the last minutes are not one of them
# running alone; the rest follow in their usual order. (xdist would otherwise order modules
# by their number of tests, which put the long modules of few tests last.)
LONGEST_FIRST = (
    "test_train_job.py",
    "test_doc_commands.py",
    "test_faults.py",
    "test_generate_job.py",
    "test_extract_job.py",
    "test_demo.py",
    "test_jobs_api.py",
    "test_long_jobs.py",
    "test_object_storage.py",
    "test_pipeline.py",
    "test_front_door.py",
    "test_runner_gpus.py",
    "test_ray_job_submit.py",
    "test_bounded_memory.py",
    "test_bad_inputs.py",
    "test_qa_report.py",
    "test_environment.py",
    "test_report_page.py",
    "test_long_memory.py",
    "test_bf16.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, but a process is handed its next module only when it is on the last
    test of its current one (xdist's default queues the next module once fewer than 3 tests
    are left, so a short module of 2 long tests, like the demo's, keeps another long module
    waiting behind it while other processes run out of work)."""
    if config.getvalue("dist") != "loadfile":
        return None
    config.option.loadscopereorder = False  # keep the collection's order (LONGEST_FIRST)
    from xdist.scheduler import LoadFileScheduling

    class OneModuleAtATime(LoadFileScheduling):
        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            # a process runs a test once it knows the next one: 1 pending is its last test
            if self._pending_of(self.assigned_work[node]) <= 1:
                self._assign_work_unit(node)

    return OneModuleAtATime(config, log)


def pytest_sessionfinish(session, exitstatus):
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
