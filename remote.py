"""
Files over the network, beside files.py. Published weights come from the Hugging Face hub through huggingface_hub:
its cache (HF_HOME, shared with transformers and diffusers, so nothing is fetched twice), its token (`hf auth
login` or HF_TOKEN), its endpoint (HF_ENDPOINT) and offline switch (HF_HUB_OFFLINE); each published default is
pinned to a commit. What is this project's own: which files, and one line for each way a download fails.
"""
import os

# ----------------------------------------------------------------------------------------------------------------
# The hub. A weights source is a local folder, or "owner/name[/folder][@revision]" on the hub; without a revision,
# a published default (encoders.SEMANTIC, encoders.VAES) reads the commit pinned here, so every run of a config
# loads the same weights, and any other repository reads "main". The RAE decoders follow "main": no published
# commit of theirs could be confirmed when these were pinned.

PINNED = {
    "google/siglip2-so400m-patch14-224": "78e403963a4f6a3640d07803284752326fdf4edf",
    "facebook/webssl-dino300m-full2b-224": "8529cdb3fb75014932af3b896455fc21c386168e",
    "facebook/dinov2-large": "47b73eefe95e8d44ec3623f8890bd894b6ea2d6c",
    "stabilityai/sd-vae-ft-mse": "31f26fdeee1355a5c34592e401dd41e45d25a493",
    "black-forest-labs/FLUX.1-schnell": "741f7c3ce8b383c54771c7003378a50191e9efe9",
}


def hub_file(repo, filename, revision="main", repo_type="model", endpoint=None):
    """Local path of a file of a hub repository at a revision (branch, tag or commit), downloaded into the
    huggingface_hub cache unless it is there. The ranks of a node share the cache and its file lock: one downloads
    a file while the others wait for it. Any failure stops with one line that says what to do."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    what = f"{repo}/{filename} at revision {revision}"
    try:
        return hf_hub_download(repo, filename, revision=revision, repo_type=repo_type, endpoint=endpoint)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{endpoint} cannot be reached"
        raise SystemExit(f"{why} and {what} is not in the cache ({constants.HF_HUB_CACHE}): download it once online "
                         f"(HF_ENDPOINT for a mirror), or give a local folder with the same files")
    except GatedRepoError as e:
        raise SystemExit(f"{repo} is gated (HTTP {e.response.status_code}): accept its terms on its hub page, then "
                         f"log in (hf auth login) or set HF_TOKEN")
    except RepositoryNotFoundError:
        raise SystemExit(f"no repository {repo} on {endpoint} (a private one needs hf auth login or HF_TOKEN): "
                         f"check the name, owner/name[/folder][@revision]")
    except RevisionNotFoundError:
        raise SystemExit(f"{repo} has no revision {revision!r}: give a branch, tag or commit of it after the '@'")
    except EntryNotFoundError:
        raise SystemExit(f"{repo} has no file {filename} at revision {revision}: check the repository and folder")
    except Exception as e:   # the network failed past huggingface_hub's own retries (its errors vary by version)
        raise SystemExit(f"download of {what} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         f"): run again")


def weights_file(source, filename):
    """The path of `filename` in a weights source: a local folder, or owner/name[/folder][@revision] on the hub."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: the folder must hold the model's {filename}")
        return path
    name, _, revision = source.partition("@")
    if name.count("/") < 1 or name.startswith((".", "/")):
        raise SystemExit(f"weights '{source}': no such folder, and not a hub repository (owner/name[/folder]"
                         f"[@revision])")
    owner, repo, *folder = name.split("/")
    return hub_file(f"{owner}/{repo}", "/".join([*folder, filename]), revision or PINNED.get(f"{owner}/{repo}", "main"))
