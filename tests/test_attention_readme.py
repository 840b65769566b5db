"""``bench attention-readme``: README's per-method table comes from a result file, Grad-CAM first."""

import json

from dapt_core.cli import main
from dapt_core.experiments.attention_bench_report import README_MARKERS, readme_block


def _result():
    metrics = ("pointing", "lift", "energy_share", "area_share", "top_k", "deletion_auc", "insertion_auc")
    # two seeds, two prompt sets; legrad points better than gradcam
    values = {"gradcam": {"pointing": (0.2, 0.4), "lift": (1.0, 2.0)}, "legrad": {"pointing": (0.8, 0.6), "lift": (3.0, 3.0)}}
    per_seed = {}
    for seed in ("1", "2"):
        per_seed[seed] = {}
        for name, offset in (("a", 0.0), ("b", 0.1)):
            per_seed[seed][name] = {}
            for method, v in values.items():
                row = {m: 0.5 for m in metrics}
                row["pointing"] = v["pointing"][int(seed) - 1] + offset
                row["lift"] = v["lift"][int(seed) - 1]
                per_seed[seed][name][method] = row
    return {"backbone": "toy", "n_scenes": 7, "prompt_sets": {"a": "A", "b": "B"}, "per_seed": per_seed,
            "config": {"methods": ["legrad", "gradcam"], "seeds": [1, 2]}}


def test_readme_block_by_value():
    block = readme_block(_result())
    rows = [line for line in block.splitlines() if line.startswith("| ") and "method" not in line]
    assert rows[0].startswith("| gradcam | 0.35 ± 0.10 |") and "1.50 ± 0.50x" in rows[0]
    assert rows[1].startswith("| legrad | 0.75 ± 0.10 |") and "3.00 ± 0.00x" in rows[1]
    assert "best by pointing game: `legrad`" in block and "7 conflicting scenes" in block


def test_attention_readme_fills_only_the_marked_block(tmp_path, capsys):
    result = tmp_path / "r.json"
    result.write_text(json.dumps(_result()))
    readme = tmp_path / "README.md"
    start, end = README_MARKERS
    readme.write_text(f"before\n{start}\nold\n{end}\nafter\n")
    assert main(["bench", "attention-readme", "--result", str(result), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"before\n{start}\n") and text.endswith(f"{end}\nafter\n") and "old" not in text
    assert "| legrad | 0.75 ± 0.10 |" in text
    readme.write_text("no markers here\n")
    assert main(["bench", "attention-readme", "--result", str(result), "--readme", str(readme)]) == 2
    assert readme.read_text() == "no markers here\n"
