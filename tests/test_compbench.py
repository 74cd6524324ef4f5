"""T2I-CompBench's splits by name: pinned URLs, download from a local file server, checksum, cache, offline errors, and
an evaluation from the filled cache with no network."""

import hashlib
import http.server
import json
import threading
from functools import partial

import pytest

from noise_diffusion import compbench, paper_datasets
from noise_diffusion.compbench import COMPBENCH_FILES, SPLITS
from noise_diffusion.datasets import load_dataset
from noise_diffusion.errors import UserError
from noise_diffusion.paper_datasets import RemoteFile

# benchmark-style prompts, CRLF line ends as in the benchmark's files
SERVED = {split: f"a red {split} book and a blue bowl\r\na cup on the right of a dog\r\n".encode() for split in SPLITS}
SERVED["spatial"] = b"a cup on the right of a dog\r\na horse on side of a bicycle"  # no final line end, as there


def test_pinned_commit_urls_and_checksums():
    assert list(SPLITS) == ["color", "shape", "texture", "spatial", "non_spatial", "complex"]
    spec = COMPBENCH_FILES["t2i-compbench-non_spatial"]
    assert spec.url == ("https://raw.githubusercontent.com/Karine-Huang/T2I-CompBench/"
                        "1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/non_spatial_val.txt")
    assert spec.sha256 == "04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d"
    assert COMPBENCH_FILES["t2i-compbench-spatial"].sha256 == (
        "8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988")
    assert len({s.sha256 for s in COMPBENCH_FILES.values()}) == 6
    # each split has its own name in the cache (its category), beside the authors' files of the same cache
    assert spec.cached_path.name == "non_spatial.txt" and spec.cached_path.parent.name == "1b7094991a57"


@pytest.fixture
def server(tmp_path, monkeypatch):
    """GitHub's raw file server, stood in for by http.server on 127.0.0.1 serving SERVED at the pinned paths; the
    recorded checksums are those of SERVED (the real ones are checked against the real files by
    scripts/cache_from_clone.py)."""
    root = tmp_path / "served"
    for split, data in SERVED.items():
        path = root / compbench.REPOSITORY / compbench.COMMIT / COMPBENCH_FILES[f"t2i-compbench-{split}"].path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(paper_datasets, "RAW_BASE", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("NOISE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name, spec in COMPBENCH_FILES.items():
        digest = hashlib.sha256(SERVED[spec.name.removesuffix(".txt")]).hexdigest()
        monkeypatch.setitem(COMPBENCH_FILES, name, RemoteFile(spec.path, digest, spec.repository, spec.commit,
                                                              spec.cached_name))
    yield {"root": root, "requests": requests, "cache": tmp_path / "cache"}
    httpd.shutdown()
    httpd.server_close()


def test_a_split_downloads_once_and_then_loads_offline(server, monkeypatch):
    entries = load_dataset("t2i-compbench-spatial")
    assert [(e.prompt, e.category, e.indices) for e in entries] == [
        ("a cup on the right of a dog", "spatial", None), ("a horse on side of a bicycle", "spatial", None)]
    assert len(server["requests"]) == 1 and server["requests"][0].endswith("/examples/dataset/spatial_val.txt")
    cached = COMPBENCH_FILES["t2i-compbench-spatial"].cached_path
    assert cached.read_bytes() == SERVED["spatial"] and cached.is_relative_to(server["cache"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert len(load_dataset("t2i-compbench-spatial")) == 2 and len(server["requests"]) == 1


def test_all_six_splits_are_one_set_with_a_category_each(server, monkeypatch):
    load_dataset("t2i-compbench-color")
    entries = load_dataset("t2i-compbench")
    assert len(server["requests"]) == 6  # color was cached already
    assert [e.category for e in entries] == [s for s in SPLITS for _ in range(2)]
    assert entries[0].prompt == "a red color book and a blue bowl"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_dataset("t2i-compbench", categories=["non_spatial"])[1].prompt == "a cup on the right of a dog"
    assert len(server["requests"]) == 6


def test_a_file_that_differs_from_the_recorded_checksum_is_refused(server):
    served = server["root"] / compbench.REPOSITORY / compbench.COMMIT / "examples/dataset/shape_val.txt"
    served.write_bytes(SERVED["shape"] + b"an extra prompt\r\n")
    with pytest.raises(UserError, match=r"SHA-256 .* expected .*nothing was cached") as error:
        load_dataset("t2i-compbench-shape")
    assert "\n" not in str(error.value)
    assert not COMPBENCH_FILES["t2i-compbench-shape"].cached_path.exists()
    with pytest.raises(UserError, match="nothing was cached"):
        load_dataset("t2i-compbench")  # the whole set needs every split
    assert len(load_dataset("t2i-compbench-texture")) == 2  # a matching file is accepted


def test_a_cached_copy_that_was_altered_is_reported(server):
    load_dataset("t2i-compbench-complex")
    COMPBENCH_FILES["t2i-compbench-complex"].cached_path.write_bytes(b"a cat and a dog\r\n")
    with pytest.raises(UserError, match="delete it and run again"):
        load_dataset("t2i-compbench-complex")


def run_evaluate(argv, capsys):
    from noise_diffusion.commands.evaluate import console
    import sys

    old = sys.argv
    sys.argv = ["evaluate.py", *argv]
    try:
        with pytest.raises(SystemExit) as done:
            console()
    finally:
        sys.argv = old
    return done.value.code, capsys.readouterr()


def test_offline_and_not_cached_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOISE_DIFFUSION_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = run_evaluate(["--dataset", "t2i-compbench-spatial", "--methods", "none", "initno", "noise_diffusion",
                              "--seeds", "paper", "--result_root", str(tmp_path / "out")], capsys)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "t2i-compbench-spatial is not cached at" in lines[0]
    assert "run once with network access, or save https://raw.githubusercontent.com/" in lines[0]
    assert not (tmp_path / "out").exists()


def test_evaluate_runs_a_split_offline_from_the_filled_cache(server, monkeypatch, tmp_path, tiny_sd_dir,
                                                              tiny_clip_dir, capsys):
    from noise_diffusion.baselines import initno

    monkeypatch.setattr(initno, "ROUND_STEPS", 1)  # InitNO's loop, shortened
    monkeypatch.setattr(initno, "FINAL_STEPS", 1)
    load_dataset("t2i-compbench-spatial")  # fills the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "out"
    code, out = run_evaluate(["--dataset", "t2i-compbench-spatial", "--methods", "none", "initno", "noise_diffusion",
                              "--seeds", "1", "--limit", "1", "--sd_version", tiny_sd_dir, "--vqa_model",
                              tiny_clip_dir, "--num_denoising_steps", "2", "--max_epoch", "1",
                              "--num_candidate_noises", "2", "--result_root", str(root), "--quiet"], capsys)
    assert code == 0, out.err
    assert len(server["requests"]) == 1
    from noise_diffusion.results import run_folder

    for method in ("none", "initno", "noise_diffusion"):
        record = json.loads((run_folder(root / method, "a cup on the right of a dog", 1) / "result.json").read_text())
        assert record["config"]["evaluation"]["category"] == "spatial"
    record = json.loads((run_folder(root / "initno", "a cup on the right of a dog", 1) / "result.json").read_text())
    # the tiny tokenizer spells words letter by letter: a(1) cup(2-4) on the right of a dog(18-20) -> 'p', 'g'
    assert record["epochs"][0]["initno"]["token_indices"] == [4, 20]
