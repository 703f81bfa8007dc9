"""Which records `vqrl eval` scores: scoring records only (others counted), each tagged with its dataset and a string
sample_id, the bad ones counted per dataset and per file for the setup rule, and the checks that tie resumed rows
to their records."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vqrl.eval.predictions import EvalError
from vqrl.eval.records import read_eval_data, refuse_duplicate_ids, refuse_stale_rows


def test_scoring_records_are_kept_tagged_and_the_rest_counted(tmp_path):
    Image.new("RGB", (56, 56)).save(tmp_path / "ok.jpg")
    a = tmp_path / "koniq.json"
    a.write_text(json.dumps([
        {"image": "ok.jpg", "type": "scoring_image", "solution": 3.0, "sample_id": 17},
        {"image": "ok.jpg", "type": "choice_image", "solution": "A", "options": ["x", "y"]},
        {"image": "gone.jpg", "type": "scoring_image", "solution": 2.0},
        {"image": "ok.jpg", "type": "scoring_image", "solution": 4.0, "dataset": "spaq"},
    ]))
    b = tmp_path / "live.jsonl"
    b.write_text(json.dumps({"image": "ok.jpg", "type": "scoring_image", "solution": 9.0}) + "\n{broken\n"
                 + json.dumps({"image": "ok.jpg", "type": "scoring_image", "solution": 1.0}) + "\n")
    data = read_eval_data([str(a), str(b)], str(tmp_path), None)
    assert [(r["sample_id"], r["dataset"], r["_pos"]) for r in data.records] == [
        ("17", "koniq", 0), ("koniq:3", "spaq", 2), ("live:2", "live", 4)]
    assert all(r["image"] == str(tmp_path / "ok.jpg") for r in data.records)
    assert data.ignored == 1
    assert [r["sample_id"] for r in data.every] == ["17", "koniq:2", "koniq:3", "live:0", "live:2"]
    assert data.reasons == {1: [f"image file not found: {tmp_path / 'gone.jpg'}"],
                            3: ["solution 9.0 is outside the MOS range [1, 5]"]}
    assert data.skipped == {"koniq": 1, "live": 1}
    assert data.per_file == {str(a): [3, 2], str(b): [3, 1]}  # entries (the broken line too), usable
    assert data.problems == [f"{a}:2: image file not found: {tmp_path / 'gone.jpg'}",
                             f"{b}:1: invalid JSON at line 2 column 2: Expecting property name enclosed in double "
                             "quotes",
                             f"{b}:0: solution 9.0 is outside the MOS range [1, 5]"]


def test_repeated_sample_ids_name_the_first_five_and_count_all():
    records = [{"sample_id": f"s{i // 2}", "_file": "d.json", "_index": i} for i in range(14)]
    records.append({"sample_id": "alone", "_file": "d.json", "_index": 14})
    with pytest.raises(EvalError) as refused:
        refuse_duplicate_ids(records)
    shown = "; ".join(f"'s{k}' at d.json:{2 * k}, d.json:{2 * k + 1}" for k in range(5))
    assert str(refused.value) == (f"7 sample_id(s) repeated in the evaluation data ({shown}): predictions are keyed "
                                  "by sample_id, so each record needs its own; give them distinct sample_ids")
    refuse_duplicate_ids(records[::2])  # distinct ids pass


def test_a_resumed_row_must_have_its_records_path_and_mos():
    records = [{"sample_id": "a", "type": "scoring_video", "video": "/v/a.mp4", "solution": "3.5"}]
    refuse_stale_rows({"a": {"path": "/v/a.mp4", "mos": "3.5000000001"}}, records, "p.csv")  # within 1e-9
    with pytest.raises(EvalError, match=r"^p.csv: the row for sample 'a' is for /v/b.mp4 \(MOS 3.5\), but the data "
                                        r"now says /v/a.mp4 \(MOS 3.5\): the data changed since; use another --out, "
                                        r"or --overwrite to start over$"):
        refuse_stale_rows({"a": {"path": "/v/b.mp4", "mos": "3.5"}}, records, "p.csv")
    with pytest.raises(EvalError, match="MOS 3.6"):
        refuse_stale_rows({"a": {"path": "/v/a.mp4", "mos": "3.6"}}, records, "p.csv")
