"""Fault injection on the toy world: evaluate.py processes killed with SIGKILL at chosen and at outside moments
(during writes, between the files of a run, after a run), resumed, and compared byte for byte with an uninterrupted
run; two processes on one result root; the lock of a killed process.

Every process here is a real one (``os.fork`` of the test process, so the imports are paid once): what it leaves on
disk is exactly what a killed ``python evaluate.py`` leaves.
"""

import io
import json
import os
import signal
import sys
import time
import traceback
from contextlib import redirect_stdout
from pathlib import Path

import pytest

import evaluate as evaluate_cli
from noise_diffusion import results
from noise_diffusion.errors import UserError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

PROMPTS = ["a 2 left of a 3", "a 1 above a 4", "a 5 and a 6"]
TOY = ["--sd_version", "toy-digits", "--vqa_model", "toy-digits-cnn", "--num_denoising_steps", "3",
       "--num_candidate_noises", "4", "--max_epoch", "2", "--device", "cpu", "--quiet", "--seeds", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def argv(dataset, root, *extra):
    return ["--dataset", str(dataset), "--result_root", str(root), *TOY, *extra]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """An uninterrupted run: what every interrupted and resumed one must end up with."""
    root = tmp_path_factory.mktemp("reference")
    with redirect_stdout(io.StringIO()):
        assert evaluate_cli.main(argv(dataset, root)) == 0
    return snapshot(root)


def snapshot(root) -> dict:
    """Every run's files, byte for byte, with the timings taken out of result.json."""
    files = {}
    for folder in sorted(Path(root).glob("*/*/*")):
        record = json.loads((folder / "result.json").read_text())
        record.pop("seconds")
        for epoch in record["epochs"]:
            epoch.pop("seconds")
        key = str(folder.relative_to(root))
        files[key] = {"result.json": record}
        for name in ("best.png", "initial.png", "best_latent.safetensors"):
            files[key][name] = (folder / name).read_bytes()
    return files


def leftovers(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*.tmp"))


def fork(target, *args, stdout=None) -> int:
    """Run ``target(*args)`` in a child process; returns its pid. The child never returns into pytest."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            if stdout is not None:
                fd = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
            target(*args)
        except BaseException:
            traceback.print_exc()
            code = 3
        finally:
            sys.stdout.flush()
            os._exit(code)
    return pid


def wait(pid, timeout=120.0) -> int:
    """The child's exit status: its code, or -signal when a signal killed it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("child process hung")


def evaluate_killed_at(call: str, n: int, args: list[str]) -> None:
    """evaluate.py that SIGKILLs itself at its n-th ``os.fsync`` (a temporary file written, not yet renamed: the
    middle of a write) or right after its n-th ``os.replace`` (between two files, or just after a run's result)."""
    real, count = getattr(os, call), [0]

    def hook(*a, **k):
        count[0] += 1
        if call == "replace":
            real(*a, **k)
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        if call != "replace":
            return real(*a, **k)

    setattr(os, call, hook)
    with redirect_stdout(io.StringIO()):
        evaluate_cli.main(args)


def test_sigkill_at_many_points_then_resume_equals_an_uninterrupted_run(dataset, reference, tmp_path):
    root = tmp_path / "killed"
    # each resumed process is killed again; writes per run: best.png, initial.png, latent, result.json
    points = [("fsync", 2), ("replace", 4), ("fsync", 3), ("replace", 2), ("fsync", 4), ("replace", 6)]
    for call, n in points:
        assert wait(fork(evaluate_killed_at, call, n, argv(dataset, root))) == -signal.SIGKILL, (call, n)
        if call == "fsync":
            assert leftovers(root), f"the kill at fsync {n} left no temporary file"
    finished = [f for f in root.glob("*/*/*") if results.is_finished(f)]
    assert 0 < len(finished) < len(PROMPTS)
    with redirect_stdout(io.StringIO()) as out:
        assert evaluate_cli.main(argv(dataset, root)) == 0
    assert f"{len(PROMPTS) - len(finished)} runs made here" in out.getvalue()
    assert snapshot(root) == reference
    assert not [p for p in leftovers(root) if "/" in p]  # every run folder was cleaned when it was written
    assert (root / "summary.md").is_file()


def test_sigkill_from_outside_then_resume(dataset, reference, tmp_path):
    root = tmp_path / "killed"
    pid = fork(evaluate_killed_at, "fsync", 10**9, argv(dataset, root))  # never kills itself
    deadline = time.monotonic() + 120
    while not list(root.glob("*/*/*/initial.png")) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    assert wait(pid) == -signal.SIGKILL
    with redirect_stdout(io.StringIO()):
        assert evaluate_cli.main(argv(dataset, root)) == 0
    assert snapshot(root) == reference


def evaluate_logging_runs(log: Path, args: list[str], first_pause: float = 0.0) -> None:
    """evaluate.py that appends one line to ``log`` per job it optimises (pausing ``first_pause`` seconds in its
    first job)."""
    from noise_diffusion import evaluation

    real, pause = evaluation.optimize, [first_pause]

    def logged(generator, verifier, prompts, seeds, *rest, **options):
        time.sleep(pause.pop() if pause else 0.0)
        with open(log, "a") as handle:
            handle.writelines(f"{p}|{s}\n" for p, s in zip(prompts, seeds))
        return real(generator, verifier, prompts, seeds, *rest, **options)

    evaluation.optimize = logged
    with redirect_stdout(io.StringIO()):
        evaluate_cli.main(args)


@pytest.mark.parametrize("extra, pause", [(["--shard", "0/1"], 0.0), (["--overwrite"], 5.0)])
def test_two_processes_on_one_root_run_every_job_once(dataset, reference, tmp_path, extra, pause):
    """The same job list twice at the same time (two shells, one --shard given twice). With --overwrite the first
    process dawdles in its first job while the second does the others: they are redone once, not twice."""
    root = tmp_path / "shared"
    logs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    pids = [fork(evaluate_logging_runs, log, argv(dataset, root, *extra), first_pause)
            for log, first_pause in zip(logs, (pause, 0.0))]
    assert [wait(pid) for pid in pids] == [0, 0]
    runs = [line for log in logs if log.exists() for line in log.read_text().splitlines()]
    assert sorted(runs) == sorted(f"{p}|1" for p in PROMPTS)  # each job once, by one of the two
    assert snapshot(root) == reference


def _hold_lock(folder: Path, ready: Path) -> None:
    with results.job_lock(folder) as locked:
        assert locked
        ready.touch()
        time.sleep(600)  # until killed


def test_a_job_another_process_holds_is_left_to_it_and_a_killed_holders_lock_is_recovered(dataset, reference,
                                                                                          tmp_path, capsys):
    root = tmp_path / "locked"
    first = results.run_folder(root / "noise_diffusion", PROMPTS[0], 1)
    ready = tmp_path / "ready"
    holder = fork(_hold_lock, first, ready)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert os.waitpid(holder, os.WNOHANG) == (0, 0) and time.monotonic() < deadline, "the holder did not lock"
        time.sleep(0.01)
    try:
        assert evaluate_cli.main(argv(dataset, root)) == 0
        out = capsys.readouterr().out
        assert "2 runs made here" in out and "1 left to another process" in out
        assert not results.is_finished(first)
        import run as run_cli
        with pytest.raises(UserError, match="another process is running"):
            run_cli.main(["--prompt", PROMPTS[0], "--seed", "1", "--result_root", str(root / "noise_diffusion"),
                          *TOY[:-2]])
    finally:
        os.kill(holder, signal.SIGKILL)  # the holder dies without releasing anything
        assert wait(holder) == -signal.SIGKILL
    assert evaluate_cli.main(argv(dataset, root)) == 0
    assert "1 runs made here" in capsys.readouterr().out
    assert snapshot(root) == reference
