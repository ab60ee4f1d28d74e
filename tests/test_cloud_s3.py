"""S3 in and out against real S3-compatible servers on 127.0.0.1: moto, and SeaweedFS's S3
gateway (a real object store). Tests that inject a fault (IAM denial, a closed port) use moto
only."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from servers import FAKE_AWS, free_port, moto, s3_server

from finlora.cloud import s3
from finlora.cloud.run import apply_s3_prefix, localize_inputs
from finlora.config import TrainConfig
from finlora.errors import FinloraError

BUCKET = "finlora-test"
FAST = ["--epochs", "2", "--max_length", "32", "--batch_size", "32", "--learning_rate", "0.001"]


# Every test that uses `endpoint` runs against both servers; SeaweedFS's variants are slow
# (a `weed server` of its own, started once for the module).
BACKENDS = ["moto", pytest.param("seaweedfs", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=BACKENDS)
def endpoint(request, tmp_path_factory) -> str:
    with s3_server(request.param, tmp_path_factory.mktemp(request.param)) as url:
        yield url


@pytest.fixture
def aws(endpoint, monkeypatch) -> dict:
    """Fake credentials and the endpoint, for this process and for subprocesses."""
    env = {**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def bucket(aws, phrasebank_slice) -> str:
    client = s3.client()
    existing = [b["Name"] for b in client.list_buckets()["Buckets"]]
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(phrasebank_slice), BUCKET, "data/slice.txt")
    return BUCKET


def keys(prefix: str) -> dict[str, int]:
    return {k: size for k, size in s3.list_objects(s3.client(), BUCKET, prefix)}


def run_finlora(
    args: list[str], env: dict, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "finlora", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.mark.slow  # real `finlora train` and two `finlora predict` processes
def test_train_from_s3_to_s3_end_to_end(bucket, aws, tiny_model_dir, tmp_path):
    out = f"s3://{bucket}/runs/e2e"
    done = run_finlora(
        ["train", "--data", f"s3://{bucket}/data/slice.txt", "--model_name", str(tiny_model_dir),
         "--output_dir", out, "--seed", "3", *FAST],
        aws,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["output_dir"] == out

    uploaded = keys("runs/e2e/")
    for name in ("model.safetensors", "config.json", "final_results.json", "finlora_config.yaml"):
        assert f"runs/e2e/{name}" in uploaded
    manifest = json.loads(
        s3.client().get_object(Bucket=bucket, Key="runs/e2e/_SUCCESS")["Body"].read()
    )
    assert set(manifest["files"]) == {k.split("/", 2)[2] for k in uploaded} - {"_SUCCESS"}
    assert not [k for k in keys("runs/") if ".staging-" in k]

    # The results name the S3 locations, and the downloaded model predicts.
    local = s3.download_dir(out, tmp_path / "model")
    results = json.loads((local / "final_results.json").read_text())
    assert results["data"]["source"] == f"s3://{bucket}/data/slice.txt"
    assert "output_dir: s3://finlora-test/runs/e2e" in (local / "finlora_config.yaml").read_text()
    assert len(results["history"]) == 2

    # predict: model, input and output all on S3.
    texts = tmp_path / "texts.txt"
    texts.write_text("Profit rose sharply.\nThe company went bankrupt.\n")
    s3.upload_file(texts, f"s3://{bucket}/inputs/texts.txt")
    done = run_finlora(
        ["predict", "--model", out, "--input", f"s3://{bucket}/inputs/texts.txt",
         "--output", f"s3://{bucket}/predictions/texts.jsonl"],
        aws,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    body = s3.client().get_object(Bucket=bucket, Key="predictions/texts.jsonl")["Body"].read()
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert [r["text"] for r in rows] == ["Profit rose sharply.", "The company went bankrupt."]
    assert {r["label"] for r in rows} <= set(results["labels"])

    # predict --document: the JSON result is uploaded, not written to a local "s3:" folder.
    done = run_finlora(
        ["predict", "--model", out, "--document", str(texts),
         "--output", f"s3://{bucket}/predictions/texts.json"],
        aws, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    body = s3.client().get_object(Bucket=bucket, Key="predictions/texts.json")["Body"].read()
    assert json.loads(body)["pieces"] == 2
    assert not (tmp_path / "s3:").exists()


def test_seed_flags_map_relative_paths_under_the_bucket_prefix():
    config = apply_s3_prefix(
        TrainConfig(use_s3=True, s3_bucket="b", s3_key="proj/x/", data="data/train.csv",
                    test_data="/abs/test.csv", checkpoint_dir="ck")
    )  # fmt: skip
    assert config.data == "s3://b/proj/x/data/train.csv"
    assert config.test_data == "/abs/test.csv"
    assert config.output_dir == "s3://b/proj/x/outputs/finlora"
    assert config.checkpoint_dir == "s3://b/proj/x/ck"
    named = apply_s3_prefix(TrainConfig(use_s3=True, s3_bucket="b"))
    assert named.data_dir == "s3://b/" and named.output_dir == "s3://b/outputs/finlora"
    with pytest.raises(FinloraError, match="go together"):
        TrainConfig(use_s3=True)


def test_seed_flags_read_the_named_dataset_from_the_bucket(bucket, phrasebank_allagree, tmp_path):
    key = "seed/FinancialPhraseBank-v1.0/Sentences_AllAgree.txt"
    s3.client().upload_file(str(phrasebank_allagree), bucket, key)
    config = apply_s3_prefix(TrainConfig(use_s3=True, s3_bucket=bucket, s3_key="seed"))
    local, origins = localize_inputs(config, tmp_path)
    assert Path(local.data).read_bytes() == phrasebank_allagree.read_bytes()
    assert origins == {local.data: f"s3://{bucket}/{key}"}


def test_missing_key_error_lists_near_matches(bucket, tmp_path):
    with pytest.raises(FinloraError) as err:
        s3.download_file(f"s3://{bucket}/data/slices.txt", tmp_path)
    message = str(err.value)
    assert "does not exist" in message and f"s3://{bucket}/data/slice.txt" in message
    assert "\n" not in message


@pytest.mark.slow  # a real `finlora train` process
def test_missing_bucket_and_missing_credentials_are_one_line_errors(
    bucket, aws, tiny_model_dir, monkeypatch, tmp_path
):
    with pytest.raises(FinloraError, match="bucket 'no-such-bucket' does not exist"):
        s3.upload_dir(tiny_model_dir, "s3://no-such-bucket/x")
    env = {**aws, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    done = run_finlora(
        ["train", "--data", f"s3://{bucket}/data/slice.txt", "--model_name", str(tiny_model_dir)],
        env,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("finlora: error: no AWS credentials")


def test_writes_never_create_a_missing_bucket(bucket, tmp_path):
    """SeaweedFS creates a missing bucket on an admin's first put; finlora refuses first."""
    file = tmp_path / "x.txt"
    file.write_text("x")
    missing = "bucket 'no-such-bucket' does not exist"
    with pytest.raises(FinloraError, match=f"{missing} \\(to upload s3://no-such-bucket/x.txt\\)"):
        s3.upload_file(file, "s3://no-such-bucket/x.txt")
    with pytest.raises(FinloraError, match=f"{missing} \\(to write to s3://no-such-bucket/run\\)"):
        s3.check_writable("s3://no-such-bucket/run")
    assert "no-such-bucket" not in {b["Name"] for b in s3.client().list_buckets()["Buckets"]}


@pytest.mark.slow  # a real `finlora train` process
def test_a_missing_output_bucket_fails_before_training(aws, tiny_model_dir, phrasebank_slice,
                                                      tmp_path):  # fmt: skip
    checkpoints = tmp_path / "checkpoints"  # training would create it
    done = run_finlora(
        ["train", "--data", str(phrasebank_slice), "--model_name", str(tiny_model_dir),
         "--output_dir", "s3://no-such-bucket/run", "--checkpoint_dir", str(checkpoints), *FAST],
        aws,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "finlora: error: bucket 'no-such-bucket' does not exist (to write to "
        "s3://no-such-bucket/run); check the name and region, or create it"
    )
    assert "training LoRA" not in done.stderr and not checkpoints.exists()
    # SeaweedFS creates a missing bucket on an admin's first put: finlora must not make one.
    assert "no-such-bucket" not in {b["Name"] for b in s3.client().list_buckets()["Buckets"]}


@pytest.mark.slow  # a real `finlora train` process
def test_an_unreachable_output_endpoint_fails_with_one_line(tiny_model_dir, phrasebank_slice):
    """A closed port: the probe before training gives up after 2 quick attempts."""
    closed = f"http://127.0.0.1:{free_port()}"
    done = run_finlora(
        ["-q", "train", "--data", str(phrasebank_slice), "--model_name", str(tiny_model_dir),
         "--output_dir", "s3://bucket/run", "--s3_endpoint_url", closed, *FAST],
        FAKE_AWS,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == (
        f"finlora: error: cannot reach the S3 endpoint to write to s3://bucket/run ({closed}); "
        "check --s3_endpoint_url / AWS_ENDPOINT_URL and the network"
    )


@pytest.mark.slow  # a second moto server and a real `finlora predict` process
def test_access_denied_is_a_one_line_error(tmp_path, phrasebank_slice):
    """A moto server that enforces IAM: a user without S3 permissions is denied."""
    fake = {k: v for k, v in FAKE_AWS.items() if not k.startswith("AWS_ACCESS")}
    # The first 4 requests (bucket, object, user, key) are let through; then IAM applies.
    with moto(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as url:
        admin = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        admin.client("s3", endpoint_url=url).create_bucket(Bucket="locked")
        admin.client("s3", endpoint_url=url).upload_file(str(phrasebank_slice), "locked", "a.txt")
        iam = admin.client("iam", endpoint_url=url)
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        env = {
            **fake,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        done = run_finlora(
            ["predict", "--model", "s3://locked/model", "--s3_endpoint_url", url, "x"], env
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("finlora: error: access denied")


def test_multipart_upload_round_trips(bucket, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    payload = os.urandom(12 * s3.MB + 123)
    (folder / "weights.bin").write_bytes(payload)
    small_parts = s3.TransferConfig(multipart_threshold=5 * s3.MB, multipart_chunksize=5 * s3.MB)
    s3.upload_dir(folder, f"s3://{bucket}/big", transfer=small_parts)
    head = s3.client().head_object(Bucket=bucket, Key="big/weights.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    back = s3.download_dir(f"s3://{bucket}/big", tmp_path / "back")
    assert (back / "weights.bin").read_bytes() == payload


def test_when_required_checksums_round_trip(bucket, monkeypatch, tmp_path):
    """The compatibility setting docs/cloud.md gives for stores that refuse boto3's default
    CRC32 checksums: honoured by finlora's client, and uploads, copies, downloads and deletes
    still work with it."""
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    config = s3.client().meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    folder = tmp_path / "run"
    (folder / "sub").mkdir(parents=True)
    payload = os.urandom(6 * s3.MB + 1)
    (folder / "weights.bin").write_bytes(payload)
    (folder / "sub" / "a.txt").write_text("a")
    parts = s3.TransferConfig(multipart_threshold=5 * s3.MB, multipart_chunksize=5 * s3.MB)
    s3.upload_dir(folder, f"s3://{bucket}/when-required", transfer=parts)
    back = s3.download_dir(f"s3://{bucket}/when-required", tmp_path / "back")
    assert (back / "weights.bin").read_bytes() == payload
    assert (back / "sub" / "a.txt").read_text() == "a"
    s3.delete_prefix(f"s3://{bucket}/when-required")
    assert keys("when-required/") == {}


def test_delete_objects_carries_content_md5(bucket):
    """Stores that predate botocore 1.36's CRC32-only DeleteObjects require Content-MD5."""
    client = s3.client()
    for key in ("md5/a", "md5/b"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    sent = []
    client.meta.events.register(
        "before-send.s3.DeleteObjects", lambda request, **_: sent.append(request)
    )
    client.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "md5/a"}, {"Key": "md5/b"}], "Quiet": True}
    )
    (request,) = sent
    digest = base64.b64encode(hashlib.md5(request.body).digest()).decode()
    header = request.headers["Content-MD5"]
    assert (header.decode() if isinstance(header, bytes) else header) == digest
    assert keys("md5/") == {}


@pytest.mark.slow  # a real upload process, killed half-way
def test_killed_upload_never_looks_complete(bucket, aws, tmp_path):
    """SIGKILL an upload half-way: no _SUCCESS, the previous complete output stays intact."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / "a.txt").write_text("previous run")
    s3.upload_dir(old, f"s3://{bucket}/killed")
    new.mkdir()
    for i in range(600):
        (new / f"part-{i:04d}.txt").write_text(f"new {i}")
    code = (
        "import sys; from finlora.cloud.s3 import upload_dir; "
        f"upload_dir({str(new)!r}, 's3://{bucket}/killed')"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **aws})
    try:
        deadline = time.monotonic() + 120
        while not [k for k in keys("killed.staging-") if "part-" in k]:
            assert process.poll() is None and time.monotonic() < deadline, "upload never started"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert keys("killed/") == {
        "killed/a.txt": 12,
        "killed/_SUCCESS": keys("killed/")["killed/_SUCCESS"],
    }
    assert (
        s3.download_dir(f"s3://{bucket}/killed", tmp_path / "read").joinpath("a.txt").read_text()
        == "previous run"
    )
    # A prefix that only ever saw a partial upload is refused by readers.
    s3.client().put_object(Bucket=bucket, Key="partial/model.safetensors", Body=b"x")
    with pytest.raises(FinloraError, match="no _SUCCESS marker"):
        s3.download_dir(f"s3://{bucket}/partial", tmp_path / "partial")
