"""jobs.stylize.dataset: folders or prefixes expanded into a manifest, styles paired by a seeded hash."""
import pytest
from PIL import Image

from jobs.stylize.dataset import Dataset, StyleRing, expand, output_name
from jobs.stylize.driver import main

CONTENTS = [f"train/n{c:02d}/img{i}.JPEG" for c in range(5) for i in range(40)]
STYLES = [f"painter{i}/work{i}.jpg" for i in range(30)]


def test_pairs_depend_on_the_seed_only_not_on_listing_order():
    ring, shuffled = StyleRing(STYLES), StyleRing(STYLES[::-1])
    first = {c: ring.pick(c, 7, 3) for c in CONTENTS}
    assert first == {c: shuffled.pick(c, 7, 3) for c in CONTENTS}
    assert all(len(set(styles)) == 3 for styles in first.values())  # distinct styles per content
    other_seed = {c: ring.pick(c, 8, 3) for c in CONTENTS}
    assert sum(first[c] != other_seed[c] for c in CONTENTS) > 0.8 * len(CONTENTS)
    used = {s for styles in first.values() for s in styles}
    assert len(used) == len(STYLES)  # 600 picks reach every one of 30 styles


def test_adding_files_moves_few_pairs():
    ring = StyleRing(STYLES)
    before = {c: ring.pick(c, 0, 1)[0] for c in CONTENTS}
    after = StyleRing(STYLES + ["painter99/new.jpg"])
    moved = [c for c in CONTENTS if after.pick(c, 0, 1)[0] != before[c]]
    assert all(after.pick(c, 0, 1)[0] == "painter99/new.jpg" for c in moved)  # only onto the new style
    assert len(moved) < 0.15 * len(CONTENTS)  # about 1/31 expected


def test_output_names_mirror_the_tree():
    assert output_name("{stem}+{style}{ext}", "train/n01/x.JPEG", "a/starry night.jpg", 0) == \
           "train/n01/x+starry night.JPEG"
    assert output_name("{stem}{ext}", "x.gif", "s.png", 0) == "x.png"  # a format we cannot write: png
    assert output_name("{stem}_{k}{ext}", "a/b/c.webp", "s.png", 2) == "a/b/c_2.webp"


@pytest.fixture
def tree(tmp_path):
    """contents/{a,b/c}/*.{jpg,PNG} plus a text file; styles/ with three images."""
    for rel in ["a/one.jpg", "a/two.PNG", "b/c/three.jpeg", "b/c/notes.txt"]:
        path = tmp_path / "contents" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("not an image")
        else:
            Image.new("RGB", (40, 30), (10, 20, 30)).save(path, "PNG" if rel.endswith("PNG") else "JPEG")
    for i in range(3):
        (tmp_path / "styles").mkdir(exist_ok=True)
        Image.new("RGB", (64, 64), (i * 80, 0, 0)).save(tmp_path / "styles" / f"s{i}.jpg")
    return tmp_path


def test_expand_lists_recursively_with_extensions_in_any_case(tree):
    table = expand(Dataset(str(tree / "contents"), str(tree / "styles"), str(tree / "out"), num_styles=2, seed=7))
    rows = table.to_pylist()
    assert len(rows) == 6  # three images (not the .txt), two styles each
    assert sorted({r["content"] for r in rows}) == sorted(str(tree / "contents" / p) for p in
                                                          ["a/one.jpg", "a/two.PNG", "b/c/three.jpeg"])
    for r in rows:
        style_stem = r["style"].rsplit("/", 1)[1][:-4]
        rel = r["content"][len(str(tree / "contents")) + 1:]
        stem, ext = rel.rsplit(".", 1)
        assert r["output"] == str(tree / "out" / f"{stem}+{style_stem}.{ext}")


@pytest.mark.parametrize("change,reason", [
    ({"contents": "empty"}, "--contents {tmp}/empty: lists no images (no jpg, jpeg"),
    ({"contents": "nowhere"}, "--contents {tmp}/nowhere: lists no images (no such directory)"),
    ({"num_styles": "4"}, "--num-styles 4 is more than the 3 styles"),
    ({"output_name": "{stem}{ext}", "num_styles": "2"}, "gives one name for 2 styles"),
    ({"output_name": "{stem}{size}"}, "fields are stem, style, ext, k"),
    ({"output_name": "../{stem}{ext}"}, "--output-name '../{{stem}}{{ext}}': it has a '..' segment"),
])
def test_bad_datasets_exit_2_with_one_line_before_any_actor(tree, capsys, change, reason):
    (tree / "empty").mkdir()
    args = {"contents": str(tree / "contents"), "styles": str(tree / "styles"), "num_styles": "1",
            "output_name": "{stem}+{style}{ext}"}
    args.update({k: str(tree / v) if k == "contents" else v for k, v in change.items()})
    argv = ["--contents", args["contents"], "--styles", args["styles"], "--num-styles", args["num_styles"],
            "--output-name", args["output_name"], "--output-prefix", str(tree / "out"),
            "--results", str(tree / "results"), "--models", str(tree / "no-models")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and reason.format(tmp=tree) in err, err
    assert not (tree / "results").exists() and not (tree / "out").exists()
