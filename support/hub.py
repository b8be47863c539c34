"""
Getting files from the internet with the standard library only: resumable HTTPS downloads with progress,
size and checksum checks and atomic writes, and the Hugging Face hub conventions for fetching a T5 model
(or finding it already in the Hugging Face cache); the same for Llama 3 and DeepSeek-LLM.

    python tpv.py download t5-base            # -> models/t5-base/{config.json, model.safetensors, spiece.model}
    path = resolve_model("google/flan-t5-base")   # a folder, the HF cache, or a download
"""
import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

from support import files


class DownloadError(RuntimeError):
    """Something could not be fetched; the message says what and how to go on."""


# the original T5 checkpoints moved under the google-t5 organisation; the hub redirects the old names
LEGACY_NAMES = {n: f"google-t5/{n}" for n in ("t5-small", "t5-base", "t5-large", "t5-3b", "t5-11b")}
# config.json, one family's tokenizer, and model.safetensors or an index and its shards
TOKENIZER_FILES = (("spiece.model",), ("tokenizer.json", "tokenizer_config.json"))  # T5's; Llama's (tokenizer.json)
CHUNK = 1 << 20


def endpoint():
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline():
    return os.environ.get("TPV_OFFLINE", "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") == "1"


# -----------------------------------------------------------------------------
# one file

def human(n_bytes):
    return f"{n_bytes / 1e6:,.1f} MB"


def show_progress(label, done, total, started, resumed_from):
    rate = (done - resumed_from) / max(time.time() - started, 1e-6)
    eta = f"{(total - done) / rate:,.0f}s" if total and rate > 0 else "?"
    size = f"{human(done)} / {human(total)}" if total else human(done)
    sys.stderr.write(f"\r  {label}: {size}  {rate / 1e6:,.1f} MB/s  ETA {eta}    ")
    sys.stderr.flush()


def download(url, dest, expected_sha256=None, quiet=False):
    """Fetches url into dest. Bytes arrive in dest + '.part'; an interrupted download resumes from there;
    the file is renamed into place only when its size (and sha256, when known) is right."""
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "tpv"}
    if os.environ.get("HF_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is already whole (or longer than the file): start over
            os.remove(part)
            return download(url, dest, expected_sha256, quiet)
        gated = "; a gated repo (meta-llama/...) needs its licence accepted on the hub and an access token in " \
                "HF_TOKEN" if e.code in (401, 403) else ""
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}{gated}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot reach {url} ({getattr(e, 'reason', e)}); check the network, or set "
                            f"HF_ENDPOINT to a mirror, or pass a local model folder") from None
    with response:
        if response.status == 200:  # the server ignored our Range header: start from zero
            have = 0
        length = int(response.headers.get("Content-Length") or 0)
        total = have + length if length else None
        expected_sha256 = expected_sha256 or sha256_header(response.headers)
        label, started, resumed_from, last_shown = os.path.basename(dest), time.time(), have, 0.0
        try:
            with open(part, "ab" if have else "wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    have += len(chunk)
                    if not quiet and time.time() - last_shown > 0.5:
                        show_progress(label, have, total, started, resumed_from)
                        last_shown = time.time()
        except (OSError, urllib.error.URLError) as e:
            raise DownloadError(f"{url}: connection lost at {human(have)} ({e}); run the same command again "
                                f"to resume") from None
    if not quiet:
        show_progress(label, have, total, started, resumed_from)
        sys.stderr.write("\n")
    if total is not None and have != total:
        raise DownloadError(f"{url}: got {have:,} of {total:,} bytes; run the same command again to resume")
    if expected_sha256 and file_sha256(part) != expected_sha256:
        os.remove(part)
        raise DownloadError(f"{url}: sha256 mismatch, the download was corrupt and has been deleted; "
                            f"run the same command again")
    os.replace(part, dest)


def sha256_header(headers):
    # the hub sends the sha256 of LFS files (weights) as their ETag
    for name in ("X-Linked-Etag", "ETag"):
        value = (headers.get(name) or "").strip('"').removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    return None


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# -----------------------------------------------------------------------------
# models: a local folder, the Hugging Face cache, or the hub

def repo_id(name):
    return LEGACY_NAMES.get(name, name)


def is_complete(folder):
    """True when folder holds config.json, a tokenizer and every safetensors file the model needs."""
    if not (os.path.exists(os.path.join(folder, "config.json")) and has_tokenizer(folder)):
        return False
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return True
    shards = shard_names(folder)
    return bool(shards) and all(os.path.exists(os.path.join(folder, s)) for s in shards)


def has_tokenizer(folder):
    return any(all(os.path.exists(os.path.join(folder, f)) for f in names) for names in TOKENIZER_FILES)


def fetch_tokenizer(base, folder, quiet=False):
    """T5's spiece.model; where the repo has none (Llama 3, DeepSeek-LLM), tokenizer.json and tokenizer_config.json
    (its chat template and special tokens)."""
    for names in TOKENIZER_FILES:
        try:
            for name in names:
                if not os.path.exists(os.path.join(folder, name)):  # files already here are whole
                    download(f"{base}/{name}", os.path.join(folder, name), quiet=quiet)
            return
        except DownloadError as e:
            if "HTTP 404" not in str(e) or names == TOKENIZER_FILES[-1]:
                raise


def shard_names(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    try:
        with open(index, encoding="utf-8") as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError):
        return []


def hf_cache_dirs():
    if os.environ.get("HF_HUB_CACHE"):
        return [os.environ["HF_HUB_CACHE"]]
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return [os.path.join(home, "hub")]


def find_in_hf_cache(name):
    """The snapshot folder of a complete copy of the model in the Hugging Face cache, or None."""
    for cache in hf_cache_dirs():
        for repo in dict.fromkeys([name, repo_id(name)]):
            root = os.path.join(cache, "models--" + repo.replace("/", "--"))
            snapshots = os.path.join(root, "snapshots")
            if not os.path.isdir(snapshots):
                continue
            main = os.path.join(root, "refs", "main")
            preferred = [open(main).read().strip()] if os.path.exists(main) else []
            for rev in preferred + sorted(os.listdir(snapshots)):
                if is_complete(os.path.join(snapshots, rev)):
                    return os.path.join(snapshots, rev)
    return None


def download_model(name, models_dir="models", quiet=False):
    """Fetches config.json, the safetensors weights (or shards) and the tokenizer into models_dir/name. Gated repos
    (meta-llama/...) need an access token in HF_TOKEN."""
    folder = os.path.join(models_dir, name)
    files.make_folder(folder)
    base = f"{endpoint()}/{repo_id(name)}/resolve/main"

    def fetch(file):
        if not os.path.exists(os.path.join(folder, file)):  # files already here are whole: they were renamed in
            download(f"{base}/{file}", os.path.join(folder, file), quiet=quiet)

    fetch_tokenizer(base, folder, quiet)
    try:
        fetch("model.safetensors")
    except DownloadError as e:
        if "HTTP 404" not in str(e):
            raise
        fetch("model.safetensors.index.json")
        for shard in shard_names(folder):
            fetch(shard)
    fetch("config.json")  # last: a folder with a config is a folder whose download finished
    return folder


def find_local(name_or_dir, models_dir, ready):
    """The first of: the user's own file or folder, whatever it holds (the loaders say what it
    lacks, naming the file); models_dir/name, or the HF cache snapshot, whose contents satisfy ready."""
    path = users_path(name_or_dir, models_dir)
    if path:
        return path
    folder = os.path.join(models_dir, name_or_dir)
    if os.path.isdir(folder) and ready(folder):
        return folder
    return find_in_hf_cache(name_or_dir)


def users_path(name_or_dir, models_dir):
    """name_or_dir when it names an existing file or folder, normalised ("DIR/" and "DIR" are one folder); else
    None. A hub name's folder under models_dir (--models-dir .) is our download, not the user's: when unfinished,
    it is to be completed, not returned."""
    path = os.path.normpath(os.path.expanduser(name_or_dir))
    ours = is_hub_name(name_or_dir) and os.path.realpath(path) == os.path.realpath(os.path.join(models_dir, path))
    return path if os.path.exists(path) and not ours else None


def is_hub_name(name):
    return not name.startswith((".", "/", "~")) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def check_downloadable(name_or_dir, models_dir, allow_download):
    if not is_hub_name(name_or_dir):
        raise DownloadError(f"{name_or_dir}: no such model folder or file, and not a hub name like t5-base or "
                            f"google/flan-t5-base")
    if not allow_download or offline():
        raise DownloadError(f"model {name_or_dir} is not in {models_dir}/ nor in the Hugging Face cache, and "
                            f"downloads are off; fetch it with: python tpv.py download {name_or_dir}")


def resolve_tokenizer(name_or_dir, models_dir="models", allow_download=True):
    """A folder holding the model's tokenizer (or the user's own path: load_tokenizer checks it); fetches only
    the tokenizer files (a few MB) when they are missing."""
    found = find_local(name_or_dir, models_dir, has_tokenizer)
    if found:
        return found
    check_downloadable(name_or_dir, models_dir, allow_download)
    folder = os.path.join(models_dir, name_or_dir)
    files.make_folder(folder)
    fetch_tokenizer(f"{endpoint()}/{repo_id(name_or_dir)}/resolve/main", folder)
    return folder


def resolve_model(name_or_dir, models_dir="models", allow_download=True):
    """A model folder for a name or path: the user's own path (the loader checks it), models/NAME, the HF cache, or
    a fresh download."""
    found = find_local(name_or_dir, models_dir, is_complete)
    if found:
        return found
    check_downloadable(name_or_dir, models_dir, allow_download)
    return download_model(name_or_dir, models_dir)
