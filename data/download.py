"""
Fetching each task's original distribution from its public URL (the ones HF `datasets` scripts used), with
resume and progress (hub.download), sha256 checks of the files whose hashes are known (KNOWN_SHA256),
and atomic extraction into data_cache/raw/<task>/files.

TPV_DATA_MIRROR=URL fetches <URL>/<task>/<file name> instead (a mirror, or a local server in the tests).
Offline (allow_download=False, or TPV_OFFLINE=1) only the files downloaded before are unpacked and checked.
"""
import os
import shutil
import tarfile
import zipfile

from support import files
from support import hub

from .tasks import DataError

GLUE = "https://dl.fbaipublicfiles.com/glue/data"
FASTAI = "https://s3.amazonaws.com/fast-ai-nlp"
SOURCES = {
    "mnli": [f"{GLUE}/MNLI.zip"], "qnli": [f"{GLUE}/QNLIv2.zip"], "sst2": [f"{GLUE}/SST-2.zip"],
    "qqp": [f"{GLUE}/QQP-clean.zip"], "rte": [f"{GLUE}/RTE.zip"], "cola": [f"{GLUE}/CoLA.zip"],
    "stsb": [f"{GLUE}/STS-B.zip"],
    "mrpc": ["https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
             "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt",
             f"{GLUE}/mrpc_dev_ids.tsv"],
    "snli": ["https://nlp.stanford.edu/projects/snli/snli_1.0.zip"],
    "scitail": ["http://data.allenai.org.s3.amazonaws.com/downloads/SciTailV1.1.zip"],
    "ag_news": [f"https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/{f}"
                for f in ("train.csv", "test.csv")],
    "dbpedia": [f"{FASTAI}/dbpedia_csv.tgz"], "yelp_polarity": [f"{FASTAI}/yelp_review_polarity_csv.tgz"],
    "yahoo": [f"{FASTAI}/yahoo_answers_csv.tgz"],
    "trec": ["https://cogcomp.seas.upenn.edu/Data/QA/QC/train_5500.label",
             "https://cogcomp.seas.upenn.edu/Data/QA/QC/TREC_10.label"],
    "imdb": ["http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"],  # read in place, not extracted
    "sst5": ["https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"],
}
# sha256 of original files, where known (MANIFEST.md: byte-identical copies or Git-LFS pointers)
KNOWN_SHA256 = {
    ("cola", "train.tsv"): "cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624",
    ("cola", "dev.tsv"): "8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd",
    ("sst2", "train.tsv"): "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    ("sst2", "dev.tsv"): "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    ("qnli", "dev.tsv"): "ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd",
    ("rte", "train.tsv"): "41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c",
    ("rte", "dev.tsv"): "80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb",
    ("stsb", "train.tsv"): "41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2",
    ("stsb", "dev.tsv"): "fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59",
    ("mnli", "train.tsv"): "546d2b36951bdb0aa48c72ff8cff03481689e22b571a31bfba9c3a0388177eef",
    ("mnli", "dev_matched.tsv"): "c9e1f16b216b949175e1be84fb21124b192acfcbb18686229512d6964fddaf60",
    ("mnli", "dev_mismatched.tsv"): "fcda39204dc0d12f4d1aa9fa0a45c838ff7303aa4ecb441ea85ec34d9ccb9234",
    ("mrpc", "msr_paraphrase_train.txt"): "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89",
    ("mrpc", "msr_paraphrase_test.txt"): "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784",
    ("mrpc", "mrpc_dev_ids.tsv"): "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7",
    ("ag_news", "test.csv"): "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699",
    ("trec", "TREC_10.label"): "033f22c028c2bbba9ca682f68ffe204dc1aa6e1cf35dd6207f2d4ca67f0d0e8e",
    ("sst5", "dev.txt"): "0e9336aed6e4730e19f58d00a77b3f0297efdb755f7b5e598c98a05e3f97ea40",
    ("sst5", "test.txt"): "6e54806dee95cf80cd918e7dfb3f6770f6df24bf826f289a4d1f709e1c8f6761",
}


def source_urls(task):
    mirror = os.environ.get("TPV_DATA_MIRROR", "").rstrip("/")
    return [f"{mirror}/{task}/{os.path.basename(u)}" if mirror else u for u in SOURCES[task]]


def extract(archive, target):
    """Unpacks a zip or tar.gz into target; a truncated or corrupt archive is deleted and reported."""
    try:
        if archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(target)  # zipfile drops '..' and absolute parts of member names
        else:
            with tarfile.open(archive, "r:*") as t:
                t.extractall(target, filter="data")  # refuses members that would land outside target
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(target, ignore_errors=True)
        os.remove(archive)
        raise DataError(f"{archive}: truncated or corrupt archive ({e}); it was deleted, run the same command "
                        f"again to download it anew") from None


def verify(task, folder):
    """Checks every file with a known sha256; returns how many were checked."""
    checked = 0
    for root, _, names in os.walk(folder):
        for name in names:
            expected = KNOWN_SHA256.get((task, name))
            if expected and not name.endswith(".part"):
                path = os.path.join(root, name)
                if hub.file_sha256(path) != expected:
                    raise DataError(f"{path}: sha256 mismatch with the published file; the download is corrupt or "
                                    f"not the original distribution (removed; run the same command again)")
                checked += 1
    return checked


def download_task(task, root, allow_download=True):
    """Fetches (unless allow_download is False) and unpacks task's original files; returns the folder to
    prepare from and how many files were checked against a published sha256."""
    raw = os.path.join(root, "raw", task)
    downloads, unpacked = os.path.join(raw, "downloads"), os.path.join(raw, "files")
    urls = source_urls(task)
    fetched = [os.path.join(downloads, os.path.basename(url)) for url in urls]
    missing = [(url, dest) for url, dest in zip(urls, fetched) if not os.path.exists(dest)]
    if missing and (not allow_download or hub.offline()):  # checked before any folder is made
        raise DataError(f"{task}: not downloaded and --offline (or TPV_OFFLINE=1) forbids downloading; run "
                        f"python tpv.py download-data {task} online once, or prepare the original files you have: "
                        f"python tpv.py prepare {task} --from DIR")
    files.make_folder(downloads)
    for url, dest in missing:
        try:
            hub.download(url, dest)
        except hub.DownloadError as e:
            raise DataError(str(e)) from None
    staging = unpacked + ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for path in fetched:
        if path.endswith((".zip", ".tgz")) or (path.endswith(".tar.gz") and task != "imdb"):
            extract(path, staging)
        else:  # single files, and IMDB's archive, which the reader reads in place (100,000 small files otherwise)
            shutil.copy(path, staging)
    try:
        checked = verify(task, staging)
    except DataError:
        shutil.rmtree(staging, ignore_errors=True)
        for path in fetched:
            os.remove(path)
        raise
    shutil.rmtree(unpacked, ignore_errors=True)  # swap the verified files in
    os.replace(staging, unpacked)
    return unpacked, checked
