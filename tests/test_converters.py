"""Each converter on small files written in its dataset's official label format (rows invented, format and quirks
kept), checked for paths, rescaled values, meta and count; plus the CLI and its error messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vqrl.data.records import check_record
from vqrl.data import converters as C


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def assert_valid(records, root):
    """Every record passes the data layer's own check (type, [1,5] MOS, media file exists under root)."""
    for r in records:
        assert check_record(r, image_root=str(root), video_root=str(root)) == [], r


def by_path(records, key="image"):
    return {r[key]: r for r in records}


def write_xlsx(path: Path, sheets: dict[str, list[list]]) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        ws = book.create_sheet(name)
        for row in rows:
            ws.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


# ------------------------------------------------------------------------------------------------------------ KonIQ


KONIQ_SCORES = (
    '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"\n'
    '"10004473376.jpg",0,0,25,73,7,105,3.828571429,0.527277894,77.38362069\n'
    '"10007357496.jpg",0,3,45,47,1,96,3.479166667,0.580003025,68.72857143\n'
    '"10050349236.jpg",6,69,27,0,0,102,2.205882353,0.532846555,30.94181034\n'
)
KONIQ_SETS = (
    "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set\n"
    "10004473376.jpg,0.0,0.0,0.238,0.695,0.0667,105,77.3836206897,0.527,training\n"
    "10007357496.jpg,0.0,0.031,0.468,0.489,0.0104,96,68.7285714286,0.580,test\n"
    "10050349236.jpg,0.0588,0.676,0.264,0.0,0.0,102,30.9418103448,0.532,validation\n"
)


def test_koniq(tmp_path):
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(KONIQ_SCORES)
    touch(tmp_path, "1024x768/10004473376.jpg", "1024x768/10007357496.jpg", "1024x768/10050349236.jpg")
    recs = C.convert("koniq", tmp_path)
    assert len(recs) == 3
    r = by_path(recs)["1024x768/10004473376.jpg"]
    assert r["type"] == "scoring_image" and r["dataset"] == "koniq" and "question" not in r
    assert r["solution"] == 3.8286  # 1-5 already: identity, rounded to 4 places
    assert r["meta"]["mos_raw"] == pytest.approx(3.828571429)
    assert r["meta"]["mos_zscore"] == pytest.approx(77.38362069)
    assert r["meta"]["rule"] == "linear [1,5]->[1,5]" and r["meta"]["dataset"] == "koniq"
    assert r["meta"]["source"] == "koniq10k_scores_and_distributions.csv"
    assert "split" not in r["meta"]
    assert_valid(recs, tmp_path)


def test_koniq_splits_come_from_sets_file_not_its_mos(tmp_path):
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(KONIQ_SCORES)
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata/koniq10k_distributions_sets.csv").write_text(KONIQ_SETS)
    with pytest.raises(C.ConversionError, match="choose train, val or test"):
        C.convert("koniq", tmp_path, split="dev")
    test = C.convert("koniq10k", tmp_path, split="test")
    assert [r["image"] for r in test] == ["1024x768/10007357496.jpg"]
    assert test[0]["solution"] == 3.4792 and test[0]["meta"]["split"] == "test"  # the 1-5 MOS, not 68.7
    assert [r["meta"]["split"] for r in C.convert("koniq", tmp_path, split="val")] == ["validation"]
    assert len(C.convert("KonIQ-10k", tmp_path, split="training")) == 1
    assert {r["meta"]["split"] for r in C.convert("koniq", tmp_path)} == {"training", "test", "validation"}


def test_koniq_split_without_sets_file_is_a_clear_error(tmp_path):
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(KONIQ_SCORES)
    with pytest.raises(C.ConversionError, match="koniq10k_distributions_sets.csv"):
        C.convert("koniq", tmp_path, split="test")


def test_koniq_half_size_images_are_found(tmp_path):
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(KONIQ_SCORES)
    touch(tmp_path, "512x384/10004473376.jpg")
    assert C.convert("koniq", tmp_path)[0]["image"].startswith("512x384/")


# ------------------------------------------------------------------------------------------------------------- SPAQ


def test_spaq_xlsx(tmp_path):
    write_xlsx(tmp_path / "Annotations/MOS and Image attribute scores.xlsx", {"Sheet1": [
        ["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"],
        ["00001.jpg", 48.86, 47.43, 55.57, 55.71, 37.86, 42.57],
        ["00002.jpg", 62.5, 55.38, 67.13, 53.13, 57.5, 47.5],
        ["00003.jpg", 100, 62.38, 72.63, 65.75, 72.25, 82.71],
        [None, None, None, None, None, None, None],  # trailing padding row
    ]})
    touch(tmp_path, "TestImage/00001.jpg", "TestImage/00002.jpg", "TestImage/00003.jpg")
    recs = C.convert("spaq", tmp_path)
    assert len(recs) == 3
    r = by_path(recs)
    assert r["TestImage/00001.jpg"]["solution"] == pytest.approx(1 + 4 * 48.86 / 100)
    assert r["TestImage/00002.jpg"]["solution"] == 3.5
    assert r["TestImage/00003.jpg"]["solution"] == 5.0
    assert r["TestImage/00001.jpg"]["meta"]["rule"] == "linear [0,100]->[1,5]"
    assert r["TestImage/00001.jpg"]["meta"]["mos_raw"] == 48.86
    assert_valid(recs, tmp_path)


def test_spaq_xlsx_rows_of_text_cells_are_records_and_blank_rows_are_padding(tmp_path):
    """Spreadsheets store numbers as text at times: a row whose every cell is text is still a record; a row of
    empty or blank cells is padding."""
    write_xlsx(tmp_path / "Annotations/MOS and Image attribute scores.xlsx", {"Sheet1": [
        ["Image name", "MOS"],
        ["00001.jpg", "50"],
        ["", "  "],
        ["00002.jpg", 75],
    ]})
    touch(tmp_path, "TestImage/00001.jpg", "TestImage/00002.jpg")
    recs = C.convert("spaq", tmp_path)
    assert [(r["image"], r["solution"]) for r in recs] == [("TestImage/00001.jpg", 3.0), ("TestImage/00002.jpg", 4.0)]


def test_xlsx_without_openpyxl_says_how_to_install(tmp_path, monkeypatch):
    write_xlsx(tmp_path / "Annotations/MOS and Image attribute scores.xlsx", {"S": [["Image name", "MOS"]]})
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # import openpyxl -> ImportError
    with pytest.raises(C.ConversionError, match="pip install openpyxl"):
        C.convert("spaq", tmp_path)


# --------------------------------------------------------------------------------------------------- LIVE Challenge


def test_live_challenge_mat_drops_the_seven_training_images(tmp_path):
    from scipy.io import savemat

    names = [f"t{i}.bmp" for i in range(1, 8)] + ["100.bmp", "3.bmp", "1002.JPG"]
    mos = [63.96, 25.33, 48.93, 35.88, 66.50, 54.57, 77.88, 32.56, 44.45, 87.5]
    cell = np.empty((len(names), 1), dtype=object)  # a MATLAB cell column, as in AllImages_release.mat
    for i, n in enumerate(names):
        cell[i, 0] = np.array([n])
    (tmp_path / "Data").mkdir()
    savemat(tmp_path / "Data/AllImages_release.mat", {"AllImages_release": cell})
    savemat(tmp_path / "Data/AllMOS_release.mat", {"AllMOS_release": np.array([mos])})  # 1 x N row
    touch(tmp_path, "Images/100.bmp", "Images/3.bmp", "Images/1002.JPG", "Images/trainingImages/t1.bmp")
    recs = C.convert("clive", tmp_path)
    assert [r["image"] for r in recs] == ["Images/100.bmp", "Images/3.bmp", "Images/1002.JPG"]
    assert recs[0]["solution"] == pytest.approx(1 + 4 * 0.3256, abs=1e-4)
    assert recs[2]["meta"]["mos_raw"] == 87.5 and recs[2]["dataset"] == "livec"
    assert all(r["meta"]["rule"] == "linear [0,100]->[1,5]" for r in recs)
    assert_valid(recs, tmp_path)


def test_live_challenge_length_mismatch(tmp_path):
    from scipy.io import savemat

    (tmp_path / "Data").mkdir()
    cell = np.empty((2, 1), dtype=object)
    cell[0, 0], cell[1, 0] = np.array(["a.bmp"]), np.array(["b.bmp"])
    savemat(tmp_path / "Data/AllImages_release.mat", {"AllImages_release": cell})
    savemat(tmp_path / "Data/AllMOS_release.mat", {"AllMOS_release": np.array([[1.0, 2.0, 3.0]])})
    with pytest.raises(C.ConversionError, match="lists 2 images but .* 3 MOS"):
        C.convert("livec", tmp_path)


def test_live_challenge_wrong_variable(tmp_path):
    from scipy.io import savemat

    (tmp_path / "Data").mkdir()
    savemat(tmp_path / "Data/AllMOS_release.mat", {"mos": np.array([[1.0]])})
    savemat(tmp_path / "Data/AllImages_release.mat", {"AllImages_release": np.array(["a.bmp"])})
    with pytest.raises(C.ConversionError, match="no variable 'AllMOS_release'"):
        C.convert("livec", tmp_path)


# ------------------------------------------------------------------------------------------------------------ KADID


def test_kadid_dmos_is_quality_oriented_not_inverted(tmp_path):
    base = tmp_path / "kadid10k"
    base.mkdir()
    (base / "dmos.csv").write_text(
        "dist_img,ref_img,dmos,var\n"
        "I01_01_01.png,I01.png,4.57,0.496\n"
        "I01_01_05.png,I01.png,1.43,0.353\n"
        "I81_25_03.png,I81.png,3.0,0.812\n")
    touch(tmp_path, "kadid10k/images/I01_01_01.png", "kadid10k/images/I01_01_05.png",
          "kadid10k/images/I81_25_03.png")
    recs = C.convert("kadid-10k", tmp_path)
    r = by_path(recs)
    assert len(recs) == 3
    mild, strong = r["kadid10k/images/I01_01_01.png"], r["kadid10k/images/I01_01_05.png"]
    assert mild["solution"] == 4.57 and strong["solution"] == 1.43  # level 1 (mild) scores higher: not inverted
    assert mild["meta"]["reference"] == "kadid10k/images/I01.png" and mild["meta"]["var"] == 0.496
    assert mild["meta"]["rule"].startswith("linear [1,5]->[1,5]") and "higher is better" in mild["meta"]["rule"]
    assert_valid(recs, tmp_path)


# --------------------------------------------------------------------------------------------------------- AGIQA-3K


def test_agiqa3k(tmp_path):
    (tmp_path / "data.csv").write_text(
        "name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align\n"
        'AttnGAN_normal_000.jpg,"statue of a horse, baroque",baroque,,,0.7373,0.4921,1.6015,0.8371\n'
        "sd1.5_highcorr_012.jpg,a cat,,,,4.2,0.51,4.01,0.6\n")
    touch(tmp_path, "AGIQA-3K/AttnGAN_normal_000.jpg", "AGIQA-3K/sd1.5_highcorr_012.jpg")
    recs = C.convert("agiqa-3k", tmp_path)
    r = by_path(recs)
    low = r["AGIQA-3K/AttnGAN_normal_000.jpg"]
    assert low["solution"] == pytest.approx(1 + 4 * 0.7373 / 5, abs=1e-4)
    assert r["AGIQA-3K/sd1.5_highcorr_012.jpg"]["solution"] == pytest.approx(4.36)
    assert low["meta"]["mos_align"] == 1.6015 and low["meta"]["prompt"] == "statue of a horse, baroque"
    assert low["meta"]["rule"] == "linear [0,5]->[1,5]"
    assert_valid(recs, tmp_path)


def test_agiqa3k_media_folder_is_the_one_holding_the_images(tmp_path):
    """A one-row file converts, and its images are looked up where they are (images/), not in the first folder that
    merely exists (an empty AGIQA-3K/ left by an unzip)."""
    (tmp_path / "data.csv").write_text("name,prompt,mos_quality,std_quality,mos_align,std_align\n"
                                       "sd1.5_highcorr_012.jpg,a cat,4.2,0.51,4.01,0.6\n")
    (tmp_path / "AGIQA-3K").mkdir()
    touch(tmp_path, "images/sd1.5_highcorr_012.jpg")
    (rec,) = C.convert("agiqa-3k", tmp_path)
    assert rec["image"] == "images/sd1.5_highcorr_012.jpg" and rec["solution"] == pytest.approx(4.36)


def test_labels_convert_before_the_media_are_unpacked(tmp_path):
    """No media folder yet: paths name the dataset's usual folder (SPAQ's TestImage/), so they are right once it is
    unpacked, and the missing files are listed."""
    write_xlsx(tmp_path / "Annotations/MOS and Image attribute scores.xlsx", {"Sheet1": [
        ["Image name", "MOS"], ["00001.jpg", 50]]})
    (rec,) = C.convert("spaq", tmp_path)
    assert rec["image"] == "TestImage/00001.jpg"
    assert C.missing_media([rec], tmp_path) == ["TestImage/00001.jpg"]
    (tmp_path / "TestImages").mkdir()  # the folder is there (its other spelling), the images not yet
    (rec,) = C.convert("spaq", tmp_path)
    assert rec["image"] == "TestImages/00001.jpg"


def test_agiqa3k_a_blank_alignment_mos_is_none_not_an_error(tmp_path):
    (tmp_path / "data.csv").write_text("name,prompt,mos_quality,std_quality,mos_align,std_align\n"
                                       "a.jpg,a cat,4.2,0.51, ,\n")
    touch(tmp_path, "AGIQA-3K/a.jpg")
    (rec,) = C.convert("agiqa-3k", tmp_path)
    assert rec["meta"].get("mos_align") is None and rec["solution"] == pytest.approx(4.36)


# ------------------------------------------------------------------------------------------------------------ PIPAL


def test_pipal_elo_min_max(tmp_path):
    (tmp_path / "Train_Label").mkdir()
    (tmp_path / "Train_Label/A0001.txt").write_text("A0001_00_00.bmp,1520.0648\nA0001_10_03.bmp,1000.0000\n")
    (tmp_path / "Train_Label/A0002.txt").write_text("A0002_00_00.bmp,1800.0000\r\n\r\n")
    touch(tmp_path, "Train_Dis/A0001_00_00.bmp", "Train_Dis/A0002_00_00.bmp",
          "Distortion_2/A0001_10_03.bmp",  # the train release also ships its distortions in Distortion_1..4
          "Train_Ref/A0001.bmp", "Train_Ref/A0002.bmp")
    recs = C.convert("pipal", tmp_path)
    r = by_path(recs)
    assert len(recs) == 3
    assert r["Train_Dis/A0002_00_00.bmp"]["solution"] == 5.0
    assert r["Distortion_2/A0001_10_03.bmp"]["solution"] == 1.0
    mid = r["Train_Dis/A0001_00_00.bmp"]
    assert mid["solution"] == pytest.approx(1 + 4 * 520.0648 / 800, abs=1e-4)
    assert mid["meta"]["rule"].startswith("linear [1000,1800]->[1,5]") and "observed" in mid["meta"]["rule"]
    assert mid["meta"]["reference"] == "Train_Ref/A0001.bmp" and mid["meta"]["source"] == "Train_Label/A0001.txt"
    assert_valid(recs, tmp_path)


def test_pipal_missing_labels(tmp_path):
    with pytest.raises(C.ConversionError, match=r"Train_Label"):
        C.convert("pipal", tmp_path)


# ------------------------------------------------------------------------------------------------------------- CSIQ


def csiq_sheet(rows):
    """all_by_image as distributed: title rows, header in row 4 starting at column D."""
    pad = [None, None, None]
    return ([["CSIQ image quality database"], ["DMOS by image"], []]
            + [pad + ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"]]
            + [pad + r for r in rows] + [pad + [None] * 6])


def test_csiq_dmos_inverted_and_file_names(tmp_path):
    write_xlsx(tmp_path / "csiq.DMOS.xlsx", {
        "all_by_image": csiq_sheet([
            [1600, 1, "noise", 1, 0.061, 0.062],
            [1600, 2, "jpeg 2000", 5, 0.1, 0.9],
            ["aerial_city", 4, "jpeg", 3, 0.08, 0.4],
            ["boston", 3, "blur", 2, 0.05, -0.01],  # slightly below 0: kept, clipped, flagged
            ["boston", 6, "contrast", 1, 0.05, 0.25],
            ["boston", 5, "fnoise", 4, 0.05, 0.5],
        ]),
        "all_by_distortion": [["another sheet the converter must ignore"]],
    })
    touch(tmp_path, "dst_imgs/awgn/1600.AWGN.1.png", "dst_imgs/jpeg2000/1600.jpeg2000.5.png",
          "dst_imgs/jpeg/aerial_city.JPEG.3.png", "dst_imgs/blur/boston.BLUR.2.png",
          "dst_imgs/contrast/boston.contrast.1.png", "dst_imgs/fnoise/boston.fnoise.4.png")
    recs = C.convert("csiq", tmp_path)
    r = by_path(recs)
    assert len(recs) == 6
    best = r["dst_imgs/awgn/1600.AWGN.1.png"]
    assert best["solution"] == pytest.approx(5 - 4 * 0.062)  # low DMOS = good = high MOS
    assert r["dst_imgs/jpeg2000/1600.jpeg2000.5.png"]["solution"] == pytest.approx(1.4)
    assert r["dst_imgs/jpeg/aerial_city.JPEG.3.png"]["solution"] == pytest.approx(3.4)
    clipped = r["dst_imgs/blur/boston.BLUR.2.png"]
    assert clipped["solution"] == 5.0 and clipped["meta"]["clipped"] is True and clipped["meta"]["mos_raw"] == -0.01
    assert best["meta"]["rule"].startswith("inverted linear [0,1]->[5,1]")
    assert best["meta"]["reference"] == "src_imgs/1600.png"
    assert best["meta"]["distortion"] == "noise" and best["meta"]["level"] == 1
    assert "clipped" not in best["meta"]
    assert_valid(recs, tmp_path)


def test_csiq_missing_sheet(tmp_path):
    write_xlsx(tmp_path / "csiq.DMOS.xlsx", {"Sheet1": [["image", "dmos"]]})
    with pytest.raises(C.ConversionError, match="no sheet 'all_by_image'"):
        C.convert("csiq", tmp_path)


# ---------------------------------------------------------------------------------------------------------- TID2013


def test_tid2013_name_case_quirks(tmp_path):
    # names as written in mos_with_names.txt: mixed case, some .BMP; CRLF line ends
    (tmp_path / "mos_with_names.txt").write_bytes(
        b"5.51429 I01_01_1.bmp\r\n5.56757 i01_01_2.bmp\r\n5.91429 I01_11_1.BMP\r\n0.24000 i25_24_5.bmp\r\n\r\n")
    # names on disk disagree in case with the file
    touch(tmp_path, "distorted_images/i01_01_1.bmp", "distorted_images/I01_01_2.bmp",
          "distorted_images/i01_11_1.bmp", "distorted_images/i25_24_5.bmp",
          "reference_images/I01.BMP", "reference_images/i25.bmp")
    recs = C.convert("tid2013", tmp_path)
    assert [r["image"] for r in recs] == ["distorted_images/i01_01_1.bmp", "distorted_images/I01_01_2.bmp",
                                          "distorted_images/i01_11_1.bmp", "distorted_images/i25_24_5.bmp"]
    assert recs[0]["solution"] == pytest.approx(1 + 4 * 5.51429 / 9, abs=1e-4)
    assert recs[3]["solution"] == pytest.approx(1 + 4 * 0.24 / 9, abs=1e-4)
    assert recs[0]["meta"]["name"] == "I01_01_1.bmp" and recs[0]["meta"]["rule"] == "linear [0,9]->[1,5]"
    assert recs[0]["meta"]["reference"] == "reference_images/I01.BMP"
    assert recs[3]["meta"]["reference"] == "reference_images/i25.bmp"
    assert_valid(recs, tmp_path)


def test_tid2013_labels_only_keeps_names_as_written(tmp_path):
    (tmp_path / "mos_with_names.txt").write_text("4.0 I01_11_1.BMP\n")
    assert C.convert("tid", tmp_path)[0]["image"] == "distorted_images/I01_11_1.BMP"


def test_tid2013_bad_line(tmp_path):
    (tmp_path / "mos_with_names.txt").write_text("5.1 i01_01_1.bmp\nfive i01_01_2.bmp\n")
    with pytest.raises(C.ConversionError, match=r"mos_with_names.txt:2.*not a number"):
        C.convert("tid2013", tmp_path)


# ------------------------------------------------------------------------------------------------------------- LSVQ


LSVQ_TRAIN_TEST = (
    "name,p1,p2,p3,height,width,mos_p1,mos_p2,mos_p3,mos,is_test\n"
    "ia-batch1/0a1b2c,1,2,3,540,960,70.1,65.2,60.3,72.5,False\n"
    "yfcc-batch3/10072,1,2,3,720,1280,40.0,41.0,42.0,41.3,True\n"
    "yfcc-batch3/10090,1,2,3,720,1280,40.0,41.0,42.0,0.0,False\n"
)
LSVQ_1080P = "name,p1,p2,p3,height,width,mos_p1,mos_p2,mos_p3,mos\nyfcc-batch7/99,1,2,3,1080,1920,50,50,50,64.0\n"


def test_lsvq_splits(tmp_path):
    (tmp_path / "labels_train_test.csv").write_text(LSVQ_TRAIN_TEST)
    (tmp_path / "labels_test_1080p.csv").write_text(LSVQ_1080P)
    touch(tmp_path, "ia-batch1/0a1b2c.mp4", "yfcc-batch3/10072.mp4", "yfcc-batch3/10090.mp4",
          "yfcc-batch7/99.mp4")
    every = C.convert("lsvq", tmp_path)
    assert len(every) == 4 and all(r["type"] == "scoring_video" and "image" not in r for r in every)
    r = by_path(every, "video")
    assert r["ia-batch1/0a1b2c.mp4"]["solution"] == pytest.approx(1 + 4 * 0.725)
    assert r["ia-batch1/0a1b2c.mp4"]["meta"]["split"] == "train"
    assert r["yfcc-batch3/10090.mp4"]["solution"] == 1.0
    assert r["yfcc-batch7/99.mp4"]["meta"]["split"] == "test_1080p"
    assert [x["video"] for x in C.convert("lsvq", tmp_path, split="test")] == ["yfcc-batch3/10072.mp4"]
    assert len(C.convert("lsvq", tmp_path, split="train")) == 2
    assert [x["video"] for x in C.convert("lsvq", tmp_path, split="test_1080p")] == ["yfcc-batch7/99.mp4"]
    assert_valid(every, tmp_path)


def test_lsvq_missing_1080p_file_named(tmp_path):
    (tmp_path / "labels_train_test.csv").write_text(LSVQ_TRAIN_TEST)
    assert len(C.convert("lsvq", tmp_path, split="train")) == 2  # not needed for this split
    with pytest.raises(C.ConversionError, match="labels_test_1080p.csv"):
        C.convert("lsvq", tmp_path)
    with pytest.raises(C.ConversionError, match="LSVQ split 'val' unknown"):
        C.convert("lsvq", tmp_path, split="val")


# -------------------------------------------------------------------------------------------------------- KoNViD-1k


def test_konvid(tmp_path):
    (tmp_path / "KoNViD_1k_mos.csv").write_text('"flickr_id","mos"\n3339962845,4.64\n2999049224,1.0\n')
    touch(tmp_path, "KoNViD_1k_videos/3339962845.mp4", "KoNViD_1k_videos/2999049224.mp4")
    recs = C.convert("konvid-1k", tmp_path)
    assert [(r["video"], r["solution"]) for r in recs] == [("KoNViD_1k_videos/3339962845.mp4", 4.64),
                                                           ("KoNViD_1k_videos/2999049224.mp4", 1.0)]
    assert recs[0]["dataset"] == "konvid" and recs[0]["meta"]["rule"] == "linear [1,5]->[1,5]"
    assert_valid(recs, tmp_path)


# ----------------------------------------------------------------------------------------------- shared behaviour


EXPECTED_LABEL_FILE = {
    "koniq": "koniq10k_scores_and_distributions.csv", "spaq": "MOS and Image attribute scores.xlsx",
    "livec": "AllMOS_release.mat", "kadid": "dmos.csv", "agiqa3k": "data.csv", "pipal": "Train_Label",
    "csiq": "csiq.DMOS.xlsx", "tid2013": "mos_with_names.txt", "lsvq": "labels_train_test.csv",
    "konvid": "KoNViD_1k_mos.csv",
}


@pytest.mark.parametrize("name", sorted(C.CONVERTERS))
def test_missing_label_file_names_it(tmp_path, name):
    with pytest.raises(C.ConversionError) as info:
        C.convert(name, tmp_path)
    msg = str(info.value)
    assert EXPECTED_LABEL_FILE[name] in msg and str(tmp_path) in msg and "\n" not in msg


@pytest.mark.parametrize("name", sorted(set(C.CONVERTERS) - set(C.SPLITS)))
def test_split_on_a_set_without_one(tmp_path, name):
    with pytest.raises(C.ConversionError, match="no official split"):
        C.convert(name, tmp_path, split="test")


def test_every_dataset_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs/datasets.md").read_text()
    for name in C.CONVERTERS:
        assert f"`{name}`" in doc


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(C.ConversionError, match="unknown dataset 'imagenet'"):
        C.convert("imagenet", tmp_path)
    with pytest.raises(C.ConversionError, match="not a directory"):
        C.convert("koniq", tmp_path / "nope")


def test_bad_mos_value_names_file_and_line(tmp_path):
    (tmp_path / "KoNViD_1k_mos.csv").write_text("flickr_id,mos\n1,4.0\n2,n/a\n")
    with pytest.raises(C.ConversionError, match=r"KoNViD_1k_mos.csv:3 mos: 'n/a' is not a number"):
        C.convert("konvid", tmp_path)


def test_missing_column_lists_the_columns(tmp_path):
    (tmp_path / "KoNViD_1k_mos.csv").write_text("id,score\n1,4.0\n")
    with pytest.raises(C.ConversionError, match="no column 'flickr_id' .*columns: id, score"):
        C.convert("konvid", tmp_path)


def test_cli_writes_json_and_jsonl(tmp_path, capsys):
    from vqrl.cli import main

    (tmp_path / "KoNViD_1k_mos.csv").write_text("flickr_id,mos\n1,4.0\n2,2.5\n")
    touch(tmp_path, "KoNViD_1k_videos/1.mp4")
    out = tmp_path / "out/konvid.json"
    assert main(["convert", "konvid", "--root", str(tmp_path), "--out", str(out)]) == 0
    recs = json.loads(out.read_text())
    assert [r["solution"] for r in recs] == [4.0, 2.5]
    captured = capsys.readouterr()
    assert "wrote 2 records" in captured.out
    assert "1 of 2 media files not found" in captured.err and "KoNViD_1k_videos/2.mp4" in captured.err
    out_l = tmp_path / "konvid.jsonl"
    assert main(["convert", "KoNViD-1k", "--root", str(tmp_path), "--out", str(out_l)]) == 0
    assert [json.loads(line)["video"] for line in out_l.read_text().splitlines()] == [
        "KoNViD_1k_videos/1.mp4", "KoNViD_1k_videos/2.mp4"]
    # the converted file loads through the data layer
    from vqrl.data.records import read_records

    loaded = read_records(out)
    assert not loaded.problems and len(loaded.records) == 2


def test_cli_error_is_one_line_and_exit_2(tmp_path, capsys):
    from vqrl.cli import main

    out = tmp_path / "x.json"
    assert main(["convert", "kadid", "--root", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqrl convert: error: KADID-10k: label file not found") and "\n" not in err
    assert "dmos.csv" in err and not out.exists()


# ----------------------------------------------------------------------------------------------- real layouts (#20)


def test_konvid_label_file_beside_the_videos(tmp_path):
    touch(tmp_path, "KoNViD_1k_videos/3339962845.mp4")
    (tmp_path / "KoNViD_1k_videos/KoNViD_1k_mos.csv").write_text("flickr_id,mos\n3339962845,4.64\n")
    (rec,) = C.convert("konvid", tmp_path)
    assert rec["video"] == "KoNViD_1k_videos/3339962845.mp4" and rec["solution"] == 4.64
    assert rec["meta"]["source"] == "KoNViD_1k_videos/KoNViD_1k_mos.csv"
    assert_valid([rec], tmp_path)


@pytest.mark.parametrize("where", ["", "KoNViD_1k_metadata/", "KoNViD_1k_videos/"])
def test_konvid_attributes_file_alone(tmp_path, where):
    """Copies that kept only KoNViD_1k_attributes.csv (column MOS, and file_name for older video names)."""
    touch(tmp_path, "KoNViD_1k_videos/3339962845.mp4", "KoNViD_1k_videos/2999049224_original_centercrop_960x540_8s.mp4")
    (tmp_path / where).mkdir(parents=True, exist_ok=True)
    (tmp_path / where / "KoNViD_1k_attributes.csv").write_text(
        ",flickr_id,file_name,MOS,SD,blur\n"
        "0,3339962845,3339962845_original_centercrop_960x540_8s.mp4,4.64,0.5,0.1\n"
        "1,2999049224,2999049224_original_centercrop_960x540_8s.mp4,1.22,0.6,0.3\n")
    recs = C.convert("konvid", tmp_path)
    assert [(r["video"], r["solution"]) for r in recs] == [
        ("KoNViD_1k_videos/3339962845.mp4", 4.64),  # <flickr_id>.mp4 where it exists
        ("KoNViD_1k_videos/2999049224_original_centercrop_960x540_8s.mp4", 1.22)]  # else the file_name column
    assert recs[0]["meta"]["source"] == f"{where}KoNViD_1k_attributes.csv"
    assert_valid(recs, tmp_path)


def test_koniq_unpacked_into_a_folder_of_the_archives_name(tmp_path):
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(KONIQ_SCORES)
    touch(tmp_path, "koniq10k_1024x768/1024x768/10004473376.jpg", "koniq10k_1024x768/1024x768/10007357496.jpg",
          "koniq10k_1024x768/1024x768/10050349236.jpg")
    recs = C.convert("koniq", tmp_path)
    assert [r["image"] for r in recs][0] == "koniq10k_1024x768/1024x768/10004473376.jpg"
    assert_valid(recs, tmp_path)


def test_pipal_copies_with_dist_imgs(tmp_path):
    (tmp_path / "Train_Label").mkdir()
    (tmp_path / "Train_Label/A0001.txt").write_text("A0001_00_00.bmp,1520.0\nA0001_10_03.bmp,1000.0\n")
    touch(tmp_path, "Dist_Imgs/A0001_00_00.bmp", "Dist_Imgs/A0001_10_03.bmp", "Ref_Imgs/A0001.bmp")
    recs = C.convert("pipal", tmp_path)
    assert sorted(r["image"] for r in recs) == ["Dist_Imgs/A0001_00_00.bmp", "Dist_Imgs/A0001_10_03.bmp"]
    assert recs[0]["meta"]["reference"] == "Ref_Imgs/A0001.bmp"
    assert_valid(recs, tmp_path)


def _set_xlsx_dimension(path: Path, ref: str) -> None:
    """Rewrite the sheets' stored size (<dimension ref=...>), as some writers leave it wrong."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            if name.startswith("xl/worksheets/sheet"):
                data = re.sub(rb'<dimension ref="[^"]*" ?/>', f'<dimension ref="{ref}"/>'.encode(), data)
            z.writestr(name, data)


def test_xlsx_with_a_wrong_stored_sheet_size_is_read_whole(tmp_path):
    xlsx = tmp_path / "Annotations/MOS and Image attribute scores.xlsx"
    write_xlsx(xlsx, {"Sheet1": [["Image name", "MOS"], ["00001.jpg", 48.86], ["00002.jpg", 62.5]]})
    _set_xlsx_dimension(xlsx, "A1")
    touch(tmp_path, "TestImage/00001.jpg", "TestImage/00002.jpg")
    recs = C.convert("spaq", tmp_path)  # read-only openpyxl trusted "A1" and saw one cell: "no header row"
    assert [r["meta"]["mos_raw"] for r in recs] == [48.86, 62.5]


def test_cli_refuses_a_device_or_pipe_as_out_and_leaves_it(tmp_path, capsys):
    """`vqrl convert --out /dev/full` reported success and replaced the device node with a file."""
    import os
    import stat

    from vqrl.cli import main

    (tmp_path / "KoNViD_1k_mos.csv").write_text("flickr_id,mos\n1,4.0\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for out in (fifo, tmp_path):
        assert main(["convert", "konvid", "--root", str(tmp_path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"vqrl convert: error: --out {out} is not a regular file (a device, pipe or folder): "
                       "give a file path")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # /dev/full is checked the same way (not here: a regression
    # would replace the machine's device node)


def test_cli_reports_a_full_disk_and_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    import errno

    from vqrl.cli import main

    (tmp_path / "KoNViD_1k_mos.csv").write_text("flickr_id,mos\n1,4.0\n")
    out = tmp_path / "konvid.json"
    out.write_text("[]\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.json, "dump", full)
    assert main(["convert", "konvid", "--root", str(tmp_path), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"vqrl convert: error: cannot write {out}: no space left on device"
    assert out.read_text() == "[]\n" and not (tmp_path / "konvid.json.tmp").exists()


def test_cli_counts_clipped_scores_and_keeps_text_readable(tmp_path, capsys):
    """A score outside the dataset's nominal range is clipped to [1,5] and counted in the summary; prompts in other
    scripts stay readable in the written file (not \\u escapes), in JSON and JSONL alike."""
    from vqrl.cli import main

    (tmp_path / "data.csv").write_text("name,prompt,mos_quality,std_quality,mos_align,std_align\n"
                                       "a.jpg,café crème,5.2,0.5,4.0,0.6\nb.jpg,猫,2.0,0.5,4.0,0.6\n",
                                       encoding="utf-8")
    touch(tmp_path, "AGIQA-3K/a.jpg", "AGIQA-3K/b.jpg")
    for name in ("agiqa.json", "agiqa.jsonl"):
        out = tmp_path / name
        assert main(["convert", "agiqa-3k", "--root", str(tmp_path), "--out", str(out)]) == 0
        assert capsys.readouterr().out.strip().endswith("; 1 clipped to [1,5])")
        text = out.read_text(encoding="utf-8")
        assert "café crème" in text and "猫" in text


def test_a_failed_write_names_the_reason_once(tmp_path):
    (tmp_path / "taken").write_text("a file where a folder is needed")
    out = tmp_path / "taken" / "x.json"
    with pytest.raises(C.ConversionError) as info:
        C.write_records([{"image": "a.jpg"}], out)
    assert str(info.value) in (f"cannot write {out}: File exists", f"cannot write {out}: Not a directory")


def test_a_bad_out_is_refused_before_anything_is_read(tmp_path, capsys):
    """--out naming a folder is the first error, before the labels are looked for (no conversion is wasted)."""
    from vqrl.cli import main

    (tmp_path / "out").mkdir()
    assert main(["convert", "kadid", "--root", str(tmp_path / "no_labels_here"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"vqrl convert: error: --out {tmp_path / 'out'} is not a regular file (a device, pipe or folder): " \
                  "give a file path"


@pytest.mark.parametrize("name", ["out.json", "out.jsonl"])
def test_written_records_are_whole_lines_on_disk_before_the_rename(tmp_path, monkeypatch, name):
    """write_records leaves a text file of whole lines (the JSON list too ends with a newline, as `cat` and line
    tools expect), and fsync sees all of it, flushed out of Python's buffer, before the rename makes it visible."""
    records = [{"image": "a.jpg", "solution": 4.0, "prompt": "é"}, {"image": "b.jpg", "solution": 1.5}]
    synced, real_fsync, real_replace = [], C.os.fsync, C.os.replace

    def fsync(fd):
        synced.append(C.os.fstat(fd).st_size)
        return real_fsync(fd)

    def replace(src, dst):
        synced.append(("replace", Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(C.os, "fsync", fsync)
    monkeypatch.setattr(C.os, "replace", replace)
    out = tmp_path / name
    C.write_records(records, out)
    data = out.read_bytes()
    assert data.endswith(b"\n") and not data.endswith(b"\n\n")
    assert synced == [len(data), ("replace", name)]
    if name.endswith(".jsonl"):
        assert [json.loads(line) for line in data.decode().splitlines()] == records
    else:
        assert json.loads(data) == records


def test_a_split_with_no_records_names_the_split(tmp_path):
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(KONIQ_SCORES)
    (tmp_path / "metadata").mkdir()
    sets = "\n".join(line for line in KONIQ_SETS.splitlines() if not line.endswith(",test")) + "\n"
    (tmp_path / "metadata/koniq10k_distributions_sets.csv").write_text(sets)
    with pytest.raises(C.ConversionError, match=rf"^koniq: no records found under {tmp_path} for split 'test'$"):
        C.convert("koniq", tmp_path, split="test")


def test_spreadsheet_rows_without_a_name_are_skipped_not_the_rest(tmp_path):
    """A row with values but no image name (a note, a subtotal) is left out; the rows after it are still read."""
    write_xlsx(tmp_path / "Annotations/MOS and Image attribute scores.xlsx", {"Sheet1": [
        ["Image name", "MOS"], ["00001.jpg", 50], [None, 99], ["00002.jpg", 75]]})
    touch(tmp_path, "TestImage/00001.jpg", "TestImage/00002.jpg")
    assert [r["image"] for r in C.convert("spaq", tmp_path)] == ["TestImage/00001.jpg", "TestImage/00002.jpg"]
    write_xlsx(tmp_path / "csiq.DMOS.xlsx", {"all_by_image": csiq_sheet([
        [1600, 1, "noise", 1, 0.061, 0.062], [None, 9, "noise", 1, 0.1, 0.1], ["boston", 4, "jpeg", 3, 0.08, 0.4]])})
    touch(tmp_path, "dst_imgs/awgn/1600.AWGN.1.png", "dst_imgs/jpeg/boston.JPEG.3.png")
    assert sorted(r["image"] for r in C.convert("csiq", tmp_path)) == [
        "dst_imgs/awgn/1600.AWGN.1.png", "dst_imgs/jpeg/boston.JPEG.3.png"]


def test_a_sheet_without_the_header_row_is_named(tmp_path):
    write_xlsx(tmp_path / "csiq.DMOS.xlsx", {"all_by_image": [["CSIQ"], ["no header here"]]})
    with pytest.raises(C.ConversionError, match=r"csiq.DMOS.xlsx sheet 'all_by_image': no header row with columns "
                                                r"'image', 'dst_type', 'dst_lev', 'dmos'"):
        C.convert("csiq", tmp_path)
    write_xlsx(tmp_path / "Annotations/MOS and Image attribute scores.xlsx", {"Sheet1": [["name", "score"]]})
    with pytest.raises(C.ConversionError, match=r"scores.xlsx: no header row with columns 'Image name', 'MOS'$"):
        C.convert("spaq", tmp_path)


def test_names_read_as_numbers_and_empty_matlab_cells_become_text():
    assert C._name_str(1600.0) == "1600" and C._name_str(1600) == "1600" and C._name_str(" a.bmp ") == "a.bmp"
    assert C._name_str(2.5) == "2.5"
    cell = np.empty((3, 1), dtype=object)
    cell[0, 0], cell[1, 0], cell[2, 0] = np.array(["a.bmp"]), np.array([]), np.array([["b.bmp"]])
    assert C._mat_strings(cell) == ["a.bmp", "", "b.bmp"]


def test_pipal_blank_lines_inside_a_label_file_are_skipped_not_the_end(tmp_path):
    (tmp_path / "Train_Label").mkdir()
    (tmp_path / "Train_Label/A0001.txt").write_text("A0001_00_00.bmp,1520\n\n  \nA0001_10_03.bmp,1000\n")
    touch(tmp_path, "Train_Dis/A0001_00_00.bmp", "Train_Dis/A0001_10_03.bmp", "Train_Ref/A0001.bmp")
    assert sorted(r["image"] for r in C.convert("pipal", tmp_path)) == [
        "Train_Dis/A0001_00_00.bmp", "Train_Dis/A0001_10_03.bmp"]


def test_a_bad_pipal_label_line_is_named_by_its_line_number_from_one(tmp_path):
    (tmp_path / "Train_Label").mkdir()
    (tmp_path / "Train_Label/A0001.txt").write_text("A0001_00_00.bmp,1520\nA0001_10_03.bmp 1000 extra\n")
    with pytest.raises(C.ConversionError, match=r"A0001\.txt:2: expected 'NAME\.bmp,SCORE', got 'A0001_10_03"):
        C.convert("pipal", tmp_path)
    (tmp_path / "Train_Label/A0001.txt").write_text("A0001_00_00.bmp,high\n")
    with pytest.raises(C.ConversionError, match=r"A0001\.txt:1"):
        C.convert("pipal", tmp_path)


@pytest.mark.parametrize("missing", ["--root", "--out"])
def test_convert_without_root_or_out_is_a_usage_error_naming_it(tmp_path, capsys, missing):
    from vqrl.cli import main

    given = {"--root": str(tmp_path), "--out": str(tmp_path / "o.json")}
    given.pop(missing)
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "konvid", *[x for kv in given.items() for x in kv]])
    assert exit_info.value.code == 2
    assert f"the following arguments are required: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_kadid_with_a_single_row_converts(tmp_path):
    """The optional `var` column is found from the header of the first row: a one-row file (a subset) works too."""
    (tmp_path / "kadid10k").mkdir()
    (tmp_path / "kadid10k" / "dmos.csv").write_text("dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.496\n")
    (rec,) = C.convert("kadid-10k", tmp_path)
    assert rec["solution"] == 4.57 and rec["meta"]["var"] == 0.496


def test_tid2013_a_blank_line_inside_the_file_is_skipped_not_the_end(tmp_path):
    (tmp_path / "mos_with_names.txt").write_text("5.1 i01_01_1.bmp\n\n   \n4.0 i01_01_2.bmp\n")
    assert [r["meta"]["name"] for r in C.convert("tid2013", tmp_path)] == ["i01_01_1.bmp", "i01_01_2.bmp"]
