"""The trust model of a cache directory: whoever can write it can make its users unpickle, so a
directory (or its entries/, mac.key) that others can write or read the key of is refused, and
everything the cache creates is private whatever the umask (docs/store.md, "Trust model")."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import afml_cache
from afml_cache import Cache, CacheError

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, another uid)")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user can traverse (pytest's own tmp_path is root-only), removed after."""
    base = Path(tempfile.mkdtemp(prefix="afml-trust-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def as_user(uid: int, gid: int) -> str:
    """Python lines that make a test subprocess another user once the package is imported
    (that user cannot read this interpreter's site-packages, so ``setpriv python`` cannot)."""
    return f"os.setgroups([]); os.setresgid({gid}, {gid}, {gid}); os.setresuid({uid}, {uid}, {uid})"


# --- refused directories ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("part", "loose", "problem", "fix"),
    [
        ("", 0o770, "group-writable", "chmod 700"),
        ("", 0o757, "world-writable", "chmod 700"),
        ("entries", 0o770, "group-writable", "chmod 700"),
        ("entries", 0o777, "world-writable", "chmod 700"),
        ("mac.key", 0o640, "readable or writable by others", "chmod 600"),
        ("mac.key", 0o604, "readable or writable by others", "chmod 600"),
        ("mac.key", 0o620, "readable or writable by others", "chmod 600"),
    ],
)
def test_a_directory_others_can_write_is_refused_with_the_fix(tmp_path, part, loose, problem, fix):
    directory = tmp_path / "cache"
    Cache(directory).set("a", [1, 2, 3])
    path = directory / part if part else directory
    path.chmod(loose)
    with pytest.raises(CacheError) as refused:
        Cache(directory)
    message = str(refused.value)
    assert str(path) in message
    assert problem in message
    assert f"{fix} {path}" in message
    # Refusing touched nothing: with the mode put right, the entry is still there.
    path.chmod(0o600 if part == "mac.key" else 0o700)
    assert Cache(directory).get("a") == [1, 2, 3]


def test_a_loose_new_directory_is_refused_before_anything_is_created_in_it(tmp_path):
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(CacheError, match="world-writable"):
        Cache(directory)
    assert list(directory.iterdir()) == []


@needs_root
@pytest.mark.parametrize("part", ["", "entries", "mac.key"])
def test_a_directory_owned_by_another_user_is_refused(tmp_path, part):
    directory = tmp_path / "cache"
    Cache(directory).set("a", 1)
    path = directory / part if part else directory
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(CacheError) as refused:
        Cache(directory)
    message = str(refused.value)
    assert str(path) in message
    assert f"owned by another user (uid {NOBODY})" in message
    assert "configure(directory=" in message


@needs_root
def test_entries_planted_by_another_user_in_a_loose_directory_are_never_unpickled(
    run_python, shared_tmp
):
    """The attack from issue 11: another local user moves the key, counters and entries of a
    world-writable cache aside and plants an entry sealed with a key of their own."""
    victim = shared_tmp / "victim"
    victim.mkdir()
    victim.chmod(0o777)
    mine = shared_tmp / "attacker"
    mine.mkdir()
    os.chown(mine, NOBODY, NOBODY)
    run_python(
        f"""
        import os, shutil, afml_cache
        from pathlib import Path
        {as_user(NOBODY, NOBODY)}
        afml_cache.Cache({str(mine / "cache")!r}).set("report", "planted by nobody")
        victim = Path({str(victim)!r})
        for name in ("mac.key", "stats", "entries"):
            if (victim / name).exists():
                os.rename(victim / name, victim / (name + ".aside"))
        shutil.copy(Path({str(mine)!r}) / "cache" / "mac.key", victim / "mac.key")
        shutil.copytree(Path({str(mine)!r}) / "cache" / "entries", victim / "entries")
        """
    )
    with pytest.raises(CacheError, match="world-writable"):
        Cache(victim).get("report")


@needs_root
def test_statistics_of_a_directory_made_read_only_while_in_use_warn_once(run_python, shared_tmp):
    """A report must not fail the run it reports on: another function's counters cannot be
    opened for writing once the directory is read-only, and `cache_status()` raised
    StoreError. They are read from a private copy now: the report has them, and nothing warns."""
    directory = shared_tmp / "cache"
    directory.mkdir()
    os.chown(directory, NOBODY, NOBODY)
    out = run_python(
        f"""
        import os, subprocess, warnings, afml_cache
        {as_user(NOBODY, NOBODY)}
        afml_cache.configure(directory={str(directory)!r})

        @afml_cache.cacheable
        def double(x):
            return 2 * x

        double(1)
        afml_cache.Cache({str(directory)!r}).namespaced("other").set("k", 1)
        afml_cache.flush_writes()
        subprocess.run(["chmod", "-R", "a-w", {str(directory)!r}], check=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(double(2))
            print(afml_cache.cache_status())
            print(afml_cache.get_cache_stats())
        print(sum("call statistics" in str(w.message) for w in caught))
        subprocess.run(["chmod", "-R", "u+w", {str(directory)!r}], check=True)
        """
    )
    lines = out.splitlines()
    assert lines[0] == "4"
    assert "'__main__.double': {'function_name': '__main__.double', 'total_calls': 2" in lines[-2]
    assert lines[-1] == "0"


# --- the decorators ----------------------------------------------------------------------------


def test_the_decorators_warn_once_and_run_uncached_in_a_refused_directory(tmp_path):
    directory = tmp_path / "loose"
    directory.mkdir()
    directory.chmod(0o775)
    calls = []

    @afml_cache.cacheable
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    previous = afml_cache.CACHE_DIRS["base"]
    afml_cache.configure(directory=directory)
    try:
        with pytest.warns(UserWarning, match="cannot be used") as warned:
            assert double(21) == 42
            assert double(21) == 42
    finally:
        afml_cache.configure(directory=previous)
    assert calls == [21, 21]
    assert len(warned) == 1
    assert f"chmod 700 {directory}" in str(warned[0].message)
    assert list(directory.iterdir()) == []


# --- a team cache: trust_group ------------------------------------------------------------------


def team_directory(parent: Path, group: int | None = None) -> Path:
    directory = parent / "team"
    directory.mkdir()
    if group is not None:
        os.chown(directory, 0, group)
    directory.chmod(0o2770)
    return directory


def test_trust_group_accepts_a_group_writable_directory_and_never_a_world_writable_one(tmp_path):
    directory = team_directory(tmp_path)
    with pytest.raises(CacheError, match="trust_group=True"):
        Cache(directory)
    cache = Cache(directory, trust_group=True)
    cache.set("a", 1)
    assert Cache(directory, trust_group=True).get("a") == 1
    assert mode(directory / "mac.key") == 0o640
    directory.chmod(0o2777)
    with pytest.raises(CacheError, match="world-writable") as refused:
        Cache(directory, trust_group=True)
    assert "never" in str(refused.value)


def test_configure_and_the_environment_turn_trust_group_on(tmp_path, monkeypatch):
    directory = team_directory(tmp_path)
    calls = []

    @afml_cache.cacheable
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    saved = afml_cache.config.settings()
    try:
        afml_cache.configure(directory=directory, trust_group=True)
        assert [square(3), square(3)] == [9, 9]
        afml_cache.config.restore_settings(saved)
        afml_cache.configure(directory=directory)
        monkeypatch.setenv("AFML_CACHE_TRUST_GROUP", "1")
        assert Cache(directory).get("x") is None  # accepted through the environment
        assert [square(3), square(3)] == [9, 9]
    finally:
        afml_cache.config.restore_settings(saved)
    assert calls == [3]
    with pytest.raises(TypeError, match="trust_group"):
        afml_cache.configure(trust_group="yes")  # type: ignore[arg-type]


@needs_root
def test_a_team_member_reads_and_writes_a_team_cache(run_python, shared_tmp):
    import numpy as np

    directory = team_directory(shared_tmp, group=NOBODY)
    Cache(directory, trust_group=True).set("from root", np.arange(200_000))
    out = run_python(
        f"""
        import os, numpy as np, afml_cache
        {as_user(NOBODY, NOBODY)}
        directory = {str(directory)!r}
        try:
            afml_cache.Cache(directory)
            print("accepted without trust_group")
        except afml_cache.CacheError:
            pass
        cache = afml_cache.Cache(directory, trust_group=True, memory_limit=1)
        print(bool((cache.get("from root") == np.arange(200_000)).all()))
        cache.set("from nobody", np.arange(300_000))
        print(cache.stats()["count"])
        """
    )
    assert out.split() == ["True", "2"]
    back = Cache(directory, trust_group=True, memory_limit=1).get("from nobody")
    assert (back == np.arange(300_000)).all()


# --- private files whatever the umask -----------------------------------------------------------


@pytest.mark.parametrize(("umask", "trust_group"), [(0, False), (0, True), (0o077, True)])
def test_every_file_the_cache_creates_is_private_whatever_the_umask(
    run_python, tmp_path, umask, trust_group
):
    directory = team_directory(tmp_path) if trust_group else tmp_path / "new" / "cache"
    team = ", trust_group=True" if trust_group else ""
    out = run_python(
        f"""
        import json, os, stat, numpy as np, afml_cache
        from pathlib import Path
        os.umask({umask})
        directory = Path({str(directory)!r})
        afml_cache.configure(directory=directory{team})

        @afml_cache.cacheable
        def noise(n, seed):
            return np.random.default_rng(seed).random(n)

        noise(10, 0)
        noise(300_000, 1)                 # 2.4 MB: written behind, under the key's lock
        cache = afml_cache.Cache(directory, size_limit="4MB"{team})
        for seed in range(3):             # over the limit: an eviction (evict.lock)
            cache.set(seed, np.random.default_rng(seed).random(200_000))
        with cache.lock("k") as held:
            assert held
        afml_cache.flush_writes()
        modes = {{str(p.relative_to(directory)): stat.S_IMODE(p.stat().st_mode)
                  for p in directory.rglob("*")}}
        print(json.dumps(modes))
        """
    )
    modes = json.loads(out)
    kinds = {"functions", "locks", "entries", "stats", "mac.key", "evict.lock"}
    assert kinds <= {name.split("/")[0] for name in modes}
    assert any(name.endswith(".afc") for name in modes)
    assert any(name.endswith(".pack") for name in modes)  # noise(10, 0): a packed entry
    if not trust_group:
        assert mode(directory) == 0o700
        assert mode(directory.parent) == 0o700
    # Counters, locks and packs are written in place by every member of the group.
    shared = (".stats", ".lock", "/stats", ".pack")
    for name, found in modes.items():
        if (directory / name).is_dir():
            expected = 0o770 if trust_group else 0o700
            found &= 0o777  # the setgid bit of a team directory is inherited
        elif trust_group:
            expected = 0o660 if ("/" + name).endswith(shared) else 0o640
        else:
            expected = 0o600
        assert found == expected, f"{name}: {found:o}, expected {expected:o}"
