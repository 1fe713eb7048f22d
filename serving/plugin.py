"""Our plugin of TorchServe's Java frontend (serving/java/): the management endpoint
/adaptive-batching/{model}/{version}, which gives a model version batches that wait for more
requests only while another of its workers computes (TorchServe's own wait the whole batch
delay for every request, a lone client's too). Built from its sources with the JDK's
`javac` against the installed TorchServe, into a jar that TorchServe's `plugins_path`
names; `python -m serving.plugin DIR` builds it into DIR (the TorchServe image does)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

SOURCES = Path(__file__).with_name("java")
ENDPOINT = "adaptive-batching"
JAR = "mec-torchserve.jar"


def frontend_jar() -> Path:
    """TorchServe's frontend (the classes the plugin compiles against)."""
    import ts  # TorchServe's Python package ships its frontend's jar

    return Path(ts.__file__).parent / "frontend" / "model-server.jar"


def _fingerprint() -> str:
    """Of the sources and the TorchServe they are compiled against (by its version: its
    frontend's jar is 46 MB to read at every start)."""
    digest = hashlib.sha256(version("torchserve").encode())
    for path in sorted(SOURCES.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(SOURCES)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build(folder: Path) -> Path:
    """Compile the plugin into `folder`/mec-torchserve.jar (the one file there, so that
    `folder` is a plugins_path) and return `folder`."""
    javac = shutil.which("javac")
    if javac is None:
        raise RuntimeError("building TorchServe's plugin needs the JDK's javac "
                           "(Debian: apt-get install openjdk-17-jdk-headless)")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # the jar then moves atomically
        classes = Path(tmp) / "classes"
        done = subprocess.run(
            [javac, "--release", "17", "-nowarn", "-cp", str(frontend_jar()), "-d",
             str(classes), *map(str, sorted(SOURCES.rglob("*.java")))],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"javac failed on TorchServe's plugin:\n{done.stderr}")
        built = Path(tmp) / JAR
        with zipfile.ZipFile(built, "w") as jar:
            for path in sorted(classes.rglob("*.class")):
                jar.write(path, path.relative_to(classes).as_posix())
            for path in sorted((SOURCES / "META-INF").rglob("*")):
                jar.write(path, path.relative_to(SOURCES).as_posix())
        os.replace(built, folder / JAR)
    return folder


def cached() -> Path | None:
    """A plugins_path holding the plugin of these sources, built once per user (under
    $XDG_CACHE_HOME, default ~/.cache); None without a JDK."""
    if shutil.which("javac") is None:
        return None
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = root / "mec" / "torchserve-plugin" / _fingerprint()
    if not (folder / JAR).exists():
        build(folder)
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m serving.plugin FOLDER")
    print(build(Path(sys.argv[1])) / JAR)
