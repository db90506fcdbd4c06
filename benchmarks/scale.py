"""How digest's costs grow with the work, each beside the floor measured in the same run.

    python benchmarks/scale.py collect 100 1000 3000 10000    # feeds: digest collect vs benchmarks/floor.py
    python benchmarks/scale.py posts 10000 100000 1000000     # stored posts: digest feeds, digest build
    python benchmarks/scale.py send 1000 10000 100000         # subscribers: digest send vs the sink's ceiling
    python benchmarks/scale.py startup                        # digest --help, an unchanged 100-feed re-run

`send` needs the test dependencies (aiosmtpd); run `collect` and `startup` from a venv holding only digest
(`pip install -e .`), as a user's is: sqlite-utils imports numpy, and httpcore trio, whenever they are installed.

Each row is printed as soon as it is measured. Times are wall seconds of the whole command as a process
(start-up and imports included); memory is the peak summed resident size of the process and all its
children (the parse workers), sampled every 50 ms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from feedsite import feed_site, feed_urls, tree_usage  # noqa: E402


def timed(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (the process and all its descendants), peak memory of that tree (MB, PSS)
    and stdout of one command."""
    # As on a user's machine, modules are compiled once and their bytecode kept: a PYTHONDONTWRITEBYTECODE
    # set here would make every run compile digest's own modules again (60 ms) but not the installed ones.
    env = {key: value for key, value in (env or os.environ).items() if key != "PYTHONDONTWRITEBYTECODE"}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    with tree_usage(process.pid) as usage:
        out, err = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {err.decode()[-2000:]}")
    return wall, usage.cpu_seconds, usage.peak_mb, out.decode()


def _write_feeds(folder: Path, urls: list[str]) -> None:
    """feeds.yaml for digest, urls.txt for the floor: the same feeds."""
    (folder / "urls.txt").write_text("\n".join(urls))
    config = {
        "newsletter": {"title": "Scale", "sections": ["Articles"]},
        "feeds": [{"name": f"Feed {n}", "url": url, "private": True} for n, url in enumerate(urls)],
    }
    (folder / "feeds.yaml").write_text(yaml.safe_dump(config))


def collect(counts: list[int]) -> None:
    print(
        "feeds   run         digest s   floor s   ratio   digest ms/feed   CPU s digest/floor   digest MB   floor MB"
        "   posts"
    )
    for count in counts:
        with feed_site() as base, tempfile.TemporaryDirectory() as directory:
            folder = Path(directory)
            _write_feeds(folder, feed_urls(base, count))
            for label in ("first", "unchanged"):
                floor_wall, floor_cpu, floor_mb, _ = timed(
                    [sys.executable, str(HERE / "floor.py"), "urls.txt", "floor-state.json"], folder
                )
                wall, cpu, mb, out = timed([sys.executable, "-m", "digest", "collect", "--json"], folder)
                posts = json.loads(out)["new_posts"]
                print(
                    f"{count:>6}  {label:<10}  {wall:8.2f}  {floor_wall:8.2f}  {wall / floor_wall:6.2f}  "
                    f"{wall / count * 1000:14.2f}  {cpu:9.1f} / {floor_cpu:<8.1f}  {mb:10.0f}  {floor_mb:9.0f}  "
                    f"{posts:>6}",
                    flush=True,
                )


FEEDS_FOR_POSTS = 1000
POSTS_A_WEEK = 2000  # 1,000 feeds posting twice a week: the database grows, each week's issue does not


def _stored_posts(folder: Path, count: int) -> str:
    """A newsletter folder whose digest.db holds `count` posts of FEEDS_FOR_POSTS feeds, POSTS_A_WEEK of them
    a week before now, last week's issue sent: what years of collecting leave. Returns this week's id."""
    import random
    from datetime import UTC, datetime, timedelta

    sys.path.insert(0, str(HERE.parent))
    from digest import store
    from digest.issue.weeks import current_week, week_span

    feeds = [f"https://blog{n}.example.com/feed.xml" for n in range(FEEDS_FOR_POSTS)]
    config = {
        "newsletter": {"title": "Scale", "sections": ["Articles"], "timezone": "UTC"},
        "feeds": [{"name": f"Blog {n}", "url": url} for n, url in enumerate(feeds)],
    }
    (folder / "feeds.yaml").write_text(yaml.safe_dump(config))
    now = datetime.now(UTC)
    week = current_week(now, UTC)
    monday = week_span(week, UTC)[0]
    random.seed(count)
    span = int(count / POSTS_A_WEEK * 7 * 86400)
    dates = sorted(now - timedelta(seconds=random.randrange(span)) for _ in range(count))
    db = store.open_db(folder / "digest.db")
    with store.transaction(db):
        db.conn.executemany(
            "INSERT INTO feeds (url, name, section, last_status, last_fetched_at, last_ok_at) "
            "VALUES (?, ?, ?, 200, ?, ?)",
            [(url, f"Blog {n}", "Articles", store.iso(now), store.iso(now)) for n, url in enumerate(feeds)],
        )
        rows = []
        for seq, date in enumerate(dates, 1):
            feed = feeds[seq % FEEDS_FOR_POSTS]
            link = f"https://blog{seq % FEEDS_FOR_POSTS}.example.com/{seq}/"
            rows.append(
                (
                    f"p{seq}",
                    link,
                    feed,
                    f"Post {seq}: what is new",
                    f"A summary of post {seq}. " * 4,
                    store.iso(date),
                    store.iso(date),
                    link.removeprefix("https:"),
                    seq,
                )
            )
        db.conn.executemany(
            "INSERT INTO posts (id, canonical_url, feed_url, title, summary, published_at, first_seen_at, url_key, "
            "seen_seq, dated_by_feed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            rows,
        )
        db.conn.executemany(
            "INSERT INTO post_sources (post_id, feed_url) VALUES (?, ?)", [(row[0], row[2]) for row in rows]
        )
        last_week = current_week(monday - timedelta(days=1), UTC)
        built_seq = sum(1 for date in dates if date < monday)
        db.execute(
            "INSERT INTO issues (id, subject, status, backend, created_at, sent_at, built_at, built_seq) "
            "VALUES (?, 's', 'sent', 'smtp', ?, ?, ?, ?)",
            [last_week, store.iso(monday), store.iso(monday), store.iso(monday), built_seq],
        )
    db.close()
    return week


def posts(counts: list[int]) -> None:
    """`digest feeds` and `digest build` with N posts stored, 1,000 feeds."""
    print(
        f"posts       digest feeds s   digest build s   (this week's posts)   database MB   ({FEEDS_FOR_POSTS:,} feeds)"
    )
    for count in counts:
        with tempfile.TemporaryDirectory() as directory:
            folder = Path(directory)
            week = _stored_posts(folder, count)
            feeds_wall, _, _, _ = timed([sys.executable, "-m", "digest", "feeds", "--json"], folder)
            build_wall, _, _, out = timed([sys.executable, "-m", "digest", "build", "--week", week, "--json"], folder)
            items = json.loads(out).get("items")
            size = (folder / "digest.db").stat().st_size / 2**20
            print(f"{count:>9,}  {feeds_wall:15.2f}  {build_wall:15.2f}  {items!s:>16}  {size:12.0f}", flush=True)


def send(counts: list[int]) -> None:
    """`digest send` to N subscribers over SMTP beside the ceiling: plain smtplib, same sink and connections."""
    from send import measure

    print("subscribers   digest s   ceiling msg/s   digest msg/s   ratio   sending phase   digest MB   CPU µs/msg")
    for count in counts:
        result = measure(count, connections=4, say=lambda line: None)
        print(
            f"{count:>11,}  {result['wall']:9.1f}  {result['ceiling']:14,.0f}  {result['rate']:13,.0f}  "
            f"{result['rate'] / result['ceiling']:6.2f}  {result['sending_rate'] / result['ceiling']:14.2f}  "
            f"{result['peak_mb']:10.0f}  {result['cpu_us']:6,.0f} / {result['ceiling_cpu_us']:,.0f}",
            flush=True,
        )


def startup(_counts: list[int]) -> None:
    """`digest --help`, and an unchanged re-run of 100 feeds beside the floor's: what starting costs."""
    runs = 7
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        helps = sorted(timed([sys.executable, "-m", "digest", "--help"], folder)[0] for _ in range(runs))
        print(f"digest --help: median {helps[runs // 2]:.2f} s (of {runs})")
    with feed_site() as base, tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        _write_feeds(folder, feed_urls(base, 100))
        timed([sys.executable, str(HERE / "floor.py"), "urls.txt", "floor-state.json"], folder)
        timed([sys.executable, "-m", "digest", "collect"], folder)
        digest_runs, floor_runs = [], []
        for _ in range(runs):
            floor_runs.append(
                timed([sys.executable, str(HERE / "floor.py"), "urls.txt", "floor-state.json"], folder)[0]
            )
            digest_runs.append(timed([sys.executable, "-m", "digest", "collect"], folder)[0])
        digest_runs.sort()
        floor_runs.sort()
        print(
            f"unchanged re-run of 100 feeds: digest collect median {digest_runs[runs // 2]:.2f} s, "
            f"floor {floor_runs[runs // 2]:.2f} s (of {runs})"
        )


def main() -> None:
    what, *numbers = sys.argv[1:] or ["collect"]
    print(f"python {sys.version.split()[0]} at {sys.prefix}, {os.cpu_count()} cores")
    sections = {"collect": collect, "posts": posts, "send": send, "startup": startup}
    sections[what]([int(number) for number in numbers])


if __name__ == "__main__":
    main()
