"""jobs.report: a self-contained HTML page from a job's results parts."""
import base64
import io
import re

from PIL import Image

from jobs.report import main
from jobs.stylize.results import ResultsWriter


def image(path, size, colour):
    Image.new("RGB", size, colour).save(path)
    return str(path)


def record(row, content, style, output, status, error=None):
    ok = status == "ok"
    return {"row": row, "content": content, "style": style, "output": output, "method": "wct", "alpha": 1.0,
            "status": status, "error": error, "width": 900 if ok else None, "height": 600 if ok else None,
            "seconds": 2.0 if ok else 0.1, "stylize_s": 1.5 if ok else None, "attempts": 1}


def test_report_summarises_groups_failures_and_shows_thumbnails(tmp_path):
    style = image(tmp_path / "style.jpg", (640, 480), (200, 30, 30))
    contents = [image(tmp_path / f"c{i}.jpg", (900, 600), (0, 40 * i, 90)) for i in range(4)]
    outputs = [image(tmp_path / f"o{i}.jpg", (900, 600), (90, 40 * i, 0)) for i in range(4)]
    results = str(tmp_path / "results")
    first = ResultsWriter(results, "20260101T000000000000Z")
    first.add(record(0, contents[0], style, outputs[0], "ok"))
    for i in (1, 2):
        first.add(record(i, contents[i], style, outputs[i], "failed", f"{contents[i]}: truncated or corrupt image data"))
    first.add(record(3, contents[3], style, outputs[3], "failed", f"{style}: no such file or object"))
    first.close()
    rerun = ResultsWriter(results, "20260102T000000000000Z")  # a later run did row 1
    rerun.add(record(1, contents[1], style, outputs[1], "ok"))
    rerun.close()

    assert main([results, "-o", str(tmp_path / "report.html"), "--thumbnail", "120"]) == 0
    page = (tmp_path / "report.html").read_text()
    numbers = dict(re.findall(r"<tr><th>([^<]+)</th><td class='num'>([^<]+)</td></tr>", page))
    assert numbers["rows"] == "4" and numbers["ok"] == "2" and numbers["failed"] == "2" and numbers["runs"] == "2"
    assert numbers["megapixels stylized"] == "1.1"  # two ok rows of 900 x 600
    assert numbers["stylize seconds per ok row"] == "1.500" and numbers["read seconds per ok row"] == "0.000"
    # Failures by reason, the URIs under each; row 1's failure was superseded by the rerun.
    assert "truncated or corrupt image data" in page and contents[2] in page and contents[1] not in page
    assert "no such file or object" in page
    thumbs = re.findall(r"src='data:image/jpeg;base64,([^']+)'", page)
    assert len(thumbs) == 6  # content, style, output for each of the two ok rows
    assert all(max(Image.open(io.BytesIO(base64.b64decode(t))).size) <= 120 for t in thumbs)
    assert "http" not in page.replace(str(tmp_path), "")  # self-contained


def test_no_results_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path / "none"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no results parts there" in capsys.readouterr().err
