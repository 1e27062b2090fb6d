"""Untrusted names never write outside the output prefix: the rule (cdcore.io.paths) on its own,
in planning, and whole jobs over crafted S3 keys on moto's server and over crafted local trees."""
from __future__ import annotations

import io
import os
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cdcore.io import paths, storage
from jobs.stylize.driver import build_parser, main, prepare, run
from jobs.stylize.manifest import Options
from jobs.stylize.plan import plan_rows
from shared import CONTENT, MODELS, STYLE

FINE = ["in/a/fine.jpg", "in/b/also fine.jpg", "in/a/..b/c..jpg"]
CRAFTED = {  # key -> why it is refused
    "in/../../escape1.jpg": "'..' segment",
    "in/a/../../../escape2.jpg": "'..' segment",
    "in//escape3.jpg": "empty segment",
    "in/./b/../../../../escape5.jpg": "'.' segment",
    "in/a\\..\\..\\escape6.jpg": "backslash",
    "in/carriage\rreturn.jpg": "control character '\\r'",  # moto refuses a key with "\n"; S3 takes it
    "in/\x1b[2Jclear.jpg": "control character '\\x1b'",
}


@pytest.mark.parametrize("relative,why", [
    ("a/b.jpg", None), ("a/..b/c..jpg", None), ("a/.hidden.jpg", None), ("a/.../x.jpg", None),
    ("../x.jpg", "it has a '..' segment"), ("a/../x.jpg", "it has a '..' segment"), ("a/..", "it has a '..' segment"),
    ("./x.jpg", "it has a '.' segment"), ("a//x.jpg", "it has an empty segment"), ("/x.jpg", "it has an empty segment"),
    ("a/", "it has an empty segment"), ("", "it is empty"), ("a\\x.jpg", "it holds a backslash"),
    ("a\tb.jpg", "it holds the control character '\\t'"), ("a\x85b.jpg", "it holds the control character '\\x85'"),
])
def test_the_rule(relative, why):
    assert paths.problem(relative) == why


def test_s3_output_prefixes_and_outputs_keep_to_the_rule(tmp_path, capsys):
    assert paths.s3_key_problem("s3://b/out/") is None and paths.s3_key_problem("/local/../dir") is None
    assert paths.s3_key_problem("s3://b") is None and paths.s3_key_problem("s3://b/") is None
    for prefix in ("s3://b/out/../other", "s3://b//out", "s3://b/./out"):
        with pytest.raises(paths.UnsafePath, match="--output-prefix"):
            Options(prefix)
    manifest = tmp_path / "m.csv"
    manifest.write_text("content,style\nc.jpg,s.jpg\n")
    assert main(["--manifest", str(manifest), "--output-prefix", "s3://b/out/../../x", "--results",
                 str(tmp_path / "r"), "--models", str(MODELS)]) == 2
    assert "--output-prefix 's3://b/out/../../x': it has a '..' segment" in capsys.readouterr().err
    rows = plan_rows([{"content": "s3://b/in/c.jpg", "style": "s3://b/s.jpg", "output": "s3://b/out/../c.jpg"},
                      {"content": "s3://b/in/a\\b.jpg", "style": "s3://b/s.jpg"},
                      {"content": "s3://b/in/c.jpg", "style": "s3://b/s\x07.jpg"},
                      {"content": "s3://b/in/..", "style": "s3://b/s.jpg"}], Options("s3://b/out"))
    assert "output 's3://b/out/../c.jpg' is refused: it has a '..' segment" in rows[0].error
    assert "'s3://b/in/a\\\\b.jpg' with style 's3://b/s.jpg': output name" in rows[1].error
    assert "it holds a backslash" in rows[1].error and "control character '\\x07'" in rows[2].error
    assert rows[3].error is None and rows[3].output == "s3://b/out/..+s_wct_a1.png"  # one name, not a climb


def test_no_s3_key_with_dot_or_empty_segments_is_written(s3_bucket, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"x")
    for key in ("out/../x.bin", "out/./x.bin", "out//x.bin", "/x.bin"):
        with pytest.raises(storage.StorageError, match="not written, as it has an? ('..'|'.'|empty) segment"):
            storage.write_bytes(f"{s3_bucket}/{key}", b"x")
        with pytest.raises(storage.StorageError, match="not written"):
            storage.upload(tmp_path / "x.bin", f"{s3_bucket}/{key}")
    assert storage.list_files(s3_bucket) == []


def test_a_symlink_below_the_prefix_that_leads_out_is_an_escape(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / "in").mkdir(parents=True)
    outside.mkdir()
    (out / "away").symlink_to(outside)
    (out / "near").symlink_to(out / "in")  # a link that stays inside is fine
    (tmp_path / "linked-out").symlink_to(out)  # and so is a prefix that is itself a link
    assert paths.escape(str(out), str(out / "in" / "x.jpg")) is None
    assert paths.escape(str(out), str(out / "near" / "x.jpg")) is None
    assert paths.escape(str(tmp_path / "linked-out"), str(tmp_path / "linked-out" / "in" / "x.jpg")) is None
    assert "leads out of" in paths.escape(str(out), str(out / "away" / "new" / "x.jpg"))
    assert paths.escape(str(out), str(outside / "x.jpg")) is None  # not below the prefix by name: not its rule


# ---------------------------------------------------------------------------------- whole jobs

def small_jpeg(seed: int) -> bytes:
    data = io.BytesIO()
    Image.open(CONTENT / "bridge_512.jpg").resize((48, 36)).rotate(seed * 13).save(data, "JPEG")
    return data.getvalue()


def put_crafted(bucket: str) -> None:
    client = boto3.client("s3")
    for i, key in enumerate([*FINE, *CRAFTED]):
        client.put_object(Bucket=bucket, Key=key, Body=small_jpeg(i))
    style = io.BytesIO()
    Image.open(STYLE / "style_a_570.jpg").resize((48, 48)).save(style, "JPEG")
    client.put_object(Bucket=bucket, Key="styles/s.jpg", Body=style.getvalue())
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="in/")["Contents"]}
    assert listed == {*FINE, *CRAFTED}  # the store keeps every key as given


def dataset_job(contents: str, styles: str, output_prefix: str, results: Path):
    args = build_parser().parse_args([
        "--contents", contents, "--styles", styles, "--output-prefix", output_prefix, "--results", str(results),
        "--models", str(MODELS), "--actors", "1", "--levels", "2,1", "--io-threads", "0"])
    report = run(prepare(args))
    return report, {r["content"]: r for r in pq.read_table(str(results)).to_pylist()}


def check_refusals(records: dict, base: str) -> None:
    for key, why in CRAFTED.items():
        record = records[f"{base}/{key}"]
        assert record["status"] == "failed" and record["failure"] == "permanent" and record["output"] is None
        assert f"row {record['row']}: {f'{base}/{key}'!r}: path below --contents" in record["error"], record
        assert why in record["error"], record
    for key in FINE:
        assert records[f"{base}/{key}"]["status"] == "ok", records[f"{base}/{key}"]


def files_under(root: Path) -> set[str]:
    return {str(Path(folder, name).relative_to(root)) for folder, _, names in os.walk(root) for name in names}


def test_crafted_s3_keys_write_nothing_outside_a_local_output_prefix(local_ray, s3_bucket, tmp_path):
    put_crafted(s3_bucket[len("s3://"):])
    work = tmp_path / "one" / "two" / "three"  # room to climb: escapes would land in its parents
    work.mkdir(parents=True)
    report, records = dataset_job(f"{s3_bucket}/in/", f"{s3_bucket}/styles", str(work / "out"), work / "results")
    check_refusals(records, s3_bucket)
    assert report.count("ok") == len(FINE) and report.count("failed") == len(CRAFTED)
    outside = {f for f in files_under(tmp_path) if not f.startswith(("one/two/three/out/", "one/two/three/results"))}
    assert outside == set()
    assert sorted(files_under(work / "out")) == ["a/..b/c.+s.jpg", "a/fine+s.jpg", "b/also fine+s.jpg"]


def test_crafted_s3_keys_write_no_unsafe_key_under_an_s3_output_prefix(local_ray, s3_bucket, tmp_path):
    bucket = s3_bucket[len("s3://"):]
    put_crafted(bucket)
    _, records = dataset_job(f"{s3_bucket}/in", f"{s3_bucket}/styles", f"{s3_bucket}/out", tmp_path / "results")
    check_refusals(records, s3_bucket)
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    written = keys - {*FINE, *CRAFTED, "styles/s.jpg"}
    assert written == {"out/a/fine+s.jpg", "out/b/also fine+s.jpg", "out/a/..b/c.+s.jpg"}


def test_crafted_local_names_and_symlinks_write_nothing_outside_the_output_folder(local_ray, tmp_path):
    contents, outside, out = tmp_path / "contents", tmp_path / "outside", tmp_path / "out"
    for rel in ["a/fine.jpg", "link/x.jpg", "back\\slash.jpg", "new\nline.jpg"]:
        (contents / rel).parent.mkdir(parents=True, exist_ok=True)
        (contents / rel).write_bytes(small_jpeg(len(rel)))
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(small_jpeg(99))
    (contents / "a" / "linked.jpg").symlink_to(elsewhere)  # a symlink among the contents: read as the user's file
    (tmp_path / "styles").mkdir()
    Image.open(STYLE / "style_a_570.jpg").resize((48, 48)).save(tmp_path / "styles" / "s.jpg")
    outside.mkdir()
    out.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)  # planted in the output folder
    (out / "a").mkdir()
    (out / "a" / "fine+s.jpg").symlink_to(outside / "overwritten.jpg")  # and at an output's own name

    _, records = dataset_job(str(contents), str(tmp_path / "styles"), str(out), tmp_path / "results")
    by_name = {Path(c).name: r for c, r in records.items()}
    assert by_name["linked.jpg"]["status"] == "ok" and (out / "a" / "linked+s.jpg").is_file()
    for name, why in (("back\\slash.jpg", "it holds a backslash"), ("new\nline.jpg", "control character '\\n'")):
        assert by_name[name]["status"] == "failed" and why in by_name[name]["error"], by_name[name]
    through_folder, through_name = by_name["x.jpg"], by_name["fine.jpg"]
    assert through_folder["status"] == "failed" and through_folder["failure"] == "permanent"
    assert f"{out / 'link' / 'x+s.jpg'}: refused: its folder leads out of {out} through a symlink" in \
           through_folder["error"], through_folder
    assert through_name["status"] == "failed" and "it is a symlink" in through_name["error"], through_name
    assert files_under(outside) == set()
    assert not (tmp_path / "elsewhere+s.jpg").exists()
