"""README's Python example runs as written (on a folder of synthetic scenes), and its set-up commands exist."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- readme-example: start -->\s*```python\n(.*?)```\s*<!-- readme-example: end -->",
                      text, re.S)
    assert block, "README has no marked Python example"
    return block.group(1)


def test_readme_example_runs(tmp_path, monkeypatch):
    from dapt_core.world import render_scene

    rng = np.random.default_rng(0)
    for obj, background in (("circle", "grass"), ("square", "sky"), ("triangle", "water")):
        folder = tmp_path / "my_images" / obj
        folder.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(render_scene(obj, background, 64, rng).image).save(folder / f"{i}.png")
    Image.fromarray(render_scene("circle", "sky", 64, rng).image).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    assert set(namespace["learner"].classnames) == {"circle", "square", "triangle"}
    assert (tmp_path / "my-coop-dapt.safetensors").is_file()
    assert Image.open(tmp_path / "where-it-looks.png").size[0] > 0
    # the loaded prompt set is the trained one, not a fresh initialisation
    assert np.allclose(namespace["tuned"].state_dict()["ctx"].cpu().numpy(),
                       namespace["learner"].state_dict()["ctx"].cpu().numpy())


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert "pip install -r requirements.txt && python app.py" in first_block
    assert "bash tests/setup.sh && python -m pytest -q" in first_block
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash tests/setup.sh && python -m pytest -q" in ci
