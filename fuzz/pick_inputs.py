#!/usr/bin/env python3
"""Adds to corpus/TARGET the few inputs of a fuzzing run worth committing.

    python3 pick_inputs.py TARGET RUN_CORPUS_DIR [N]

Run from fuzz/ after `cargo fuzz build --sanitizer none TARGET`. libFuzzer's
merge records the coverage features of every seed and every input the run
found; this picks, greedily, the at most N (default 30) inputs of 4 KiB or less
that add the most features beyond the seeds (each at least 2), and copies them
into corpus/TARGET under their SHA-1, as libFuzzer names corpus files.
`cargo fuzz cmin` keeps every input that adds one feature, hundreds per target,
too many to commit.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile


def main():
    target, run = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    seeds = os.path.join('corpus', target)
    binary = os.path.join('target', 'x86_64-unknown-linux-gnu', 'release', target)
    with tempfile.TemporaryDirectory() as scratch:
        control = os.path.join(scratch, 'control')
        merged = os.path.join(scratch, 'merged')
        os.mkdir(merged)
        subprocess.run([binary, '-merge=1', f'-merge_control_file={control}', merged, seeds, run],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        with open(control) as f:
            lines = f.read().split('\n')
    # Control file: file count, count in the first (output) dir, the paths,
    # then "FT <index> <feature>..." per file that ran to the end.
    count = int(lines[0])
    files = lines[2:2 + count]
    features = {}
    for line in lines[2 + count:]:
        fields = line.split()
        if fields and fields[0] == 'FT':
            features[files[int(fields[1])]] = set(map(int, fields[2:]))

    def sha1(path):
        with open(path, 'rb') as f:
            return hashlib.sha1(f.read()).hexdigest()

    seed_files = [f for f in files if f.startswith(seeds)]
    have = set().union(*(features.get(f, set()) for f in seed_files))
    known = {sha1(f) for f in seed_files}
    candidates = [f for f in files if f.startswith(run) and os.path.getsize(f) <= 4096 and sha1(f) not in known]
    picked = []
    while len(picked) < limit and candidates:
        best = max(candidates, key=lambda f: (len(features.get(f, set()) - have), -os.path.getsize(f)))
        gain = len(features.get(best, set()) - have)
        if gain < 2:
            break
        picked.append(gain)
        have |= features[best]
        candidates.remove(best)
        shutil.copy(best, os.path.join(seeds, sha1(best)))
    print(f'{target}: added {len(picked)} inputs to {seeds}, new features each: {picked}')


if __name__ == '__main__':
    main()
