"""``mongotune report`` embeds only files inside the study's own artifact directory.

The study document names the final test's report and confusion matrix files (``final.report_path``,
``final.confusion_matrix_path``); whoever can write to the database can point them at any file of the
account that runs ``report``, whose HTML is then shared.  The paths are written straight into the study
document here, as such a writer would.
"""

from __future__ import annotations

import base64
import os

import pytest

from helpers import db_of, run_cli

pytestmark = pytest.mark.timeout(300)

SECRET = "TOP-SECRET-LINE of a file outside the artifact root"
PNG = b"\x89PNG\r\n\x1a\n" + b"not-really-an-image-but-marked-as-one" * 4


@pytest.fixture
def study(mongo_url):
    from mongotune.store.studies import Study, StudyStore

    db = db_of(mongo_url)
    StudyStore(db).create(Study(name="emb", max_evals=3, objective={"kind": "synthetic"},
                                space={"x": {"hp": "uniform", "low": 0.0, "high": 1.0}}))
    yield db
    db.client.close()


def _set_final(db, report_path, png_path) -> None:
    db.studies.update_one({"_id": "emb"}, {"$set": {"final": {
        "tid": 1, "test_accuracy": 0.5, "report_path": str(report_path), "confusion_matrix_path": str(png_path)}}})


def _render(db) -> str:
    from mongotune.report.html import render_report
    from mongotune.report.study_data import load_study_data

    return render_report(*load_study_data(db, "emb"))


def _embedded(html: str, png: bytes) -> tuple[bool, bool]:
    return SECRET in html, base64.b64encode(png).decode() in html


def test_report_refuses_files_outside_the_study_artifact_directory(study, mongo_url, tmp_path):
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    (tmp_path / "outside.png").write_bytes(PNG)
    _set_final(study, tmp_path / "secret.txt", tmp_path / "outside.png")
    out = tmp_path / "r.html"
    r = run_cli("report", "emb", "--out", out, "--mongo", mongo_url)
    assert r.returncode == 0, r.stdout + r.stderr
    html = out.read_text()
    assert _embedded(html, PNG) == (False, False)
    assert html.count("is outside the study&#x27;s artifact directory") == 2, html[-3000:]
    # a symlink inside the directory that points out, and a climb out with ".."
    final = tmp_path / "mongotune-home" / "artifacts" / "emb" / "final"
    final.mkdir(parents=True)
    (final / "report.txt").symlink_to(tmp_path / "secret.txt")
    _set_final(study, final / "report.txt", final / ".." / ".." / ".." / ".." / "outside.png")
    assert _embedded(_render(study), PNG) == (False, False)


def test_report_embeds_files_inside_the_study_artifact_directory(study, tmp_path, monkeypatch):
    final = tmp_path / "mongotune-home" / "artifacts" / "emb" / "final"
    final.mkdir(parents=True)
    (final / "report.txt").write_text(SECRET)
    (final / "cm.png").write_bytes(PNG)
    _set_final(study, final / "report.txt", final / "cm.png")
    assert _embedded(_render(study), PNG) == (True, True)
    (final / "cm.png").write_bytes(b"<svg onload=alert(1)>")  # inside, but not a PNG
    html = _render(study)
    assert "is not a PNG image" in html and "<svg onload" not in html
    # a shared root named by the study counts only where $MONGOTUNE_ALLOWED_ROOTS trusts it
    shared = tmp_path / "shared"
    (shared / "emb" / "final").mkdir(parents=True)
    (shared / "emb" / "final" / "cm.png").write_bytes(PNG)
    study.studies.update_one({"_id": "emb"}, {"$set": {"artifacts_root": str(shared)}})
    _set_final(study, final / "report.txt", shared / "emb" / "final" / "cm.png")
    assert _embedded(_render(study), PNG) == (True, False)
    monkeypatch.setenv("MONGOTUNE_ALLOWED_ROOTS", os.pathsep.join(["/nonexistent", str(shared)]))
    assert _embedded(_render(study), PNG) == (True, True)
