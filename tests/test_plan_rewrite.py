"""Writing a plan's autoscaling into a deployment file: table-driven over the shapes such files
take, each against the exact text expected; the refusals; and the round trip through Ferry's
loader and renderer (the InferenceServices differ only in their scaling fields, the diff only
in the autoscaling lines)."""

from __future__ import annotations

import difflib
import textwrap

import pytest

from ferry import Deployment, Promotion
from ferry.errors import ConfigError
from ferry.plan._rewrite import autoscaling_block, rewrite_autoscaling
from ferry.render import ResolvedModel, render_inferenceservice
from ferry.spec import load_specs

PLAN = dict(min_replicas=1, max_replicas=7, metric="concurrency", target=8)


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# (id, source, deployment name, values, the source expected after)
SHAPES = [
    ("keyword-present-one-line", _src('''
        from ferry import Autoscaling, Deployment, Resources

        # Serverless: scale on in-flight requests.
        web = Deployment(
            name="digits",
            model="models:/digits-classifier@champion",
            resources=Resources(cpu="1", memory="1Gi"),
            autoscaling=Autoscaling(min_replicas=0, max_replicas=5, metric="concurrency", target=32),
        )
        '''), None, PLAN, _src('''
        from ferry import Autoscaling, Deployment, Resources

        # Serverless: scale on in-flight requests.
        web = Deployment(
            name="digits",
            model="models:/digits-classifier@champion",
            resources=Resources(cpu="1", memory="1Gi"),
            autoscaling=Autoscaling(min_replicas=1, max_replicas=7, metric="concurrency", target=8),
        )
        ''')),
    ("multi-line-call-comments-and-quotes-kept", _src('''
        from ferry import Autoscaling, Deployment

        d = Deployment(
            name="m",
            model="models:/m/1",
            autoscaling=Autoscaling(
                min_replicas=0,  # scale to zero at night
                max_replicas=5,
                metric='rps',   # single quotes kept
                target=10,
                scale_down_stabilization_seconds=600,
            ),
        )
        '''), "m", dict(PLAN, metric="rps", target=242), _src('''
        from ferry import Autoscaling, Deployment

        d = Deployment(
            name="m",
            model="models:/m/1",
            autoscaling=Autoscaling(
                min_replicas=1,  # scale to zero at night
                max_replicas=7,
                metric='rps',   # single quotes kept
                target=242,
                scale_down_stabilization_seconds=600,
            ),
        )
        ''')),
    ("some-keywords-missing", _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m", model="models:/m/1", autoscaling=Autoscaling(max_replicas=4, scale_up_stabilization_seconds=30))
        '''), None, PLAN, _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m", model="models:/m/1", autoscaling=Autoscaling(max_replicas=7, scale_up_stabilization_seconds=30, min_replicas=1, metric="concurrency", target=8))
        ''')),
    ("empty-autoscaling-call", _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m", model="models:/m/1", autoscaling=Autoscaling())
        '''), None, PLAN, _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m", model="models:/m/1", autoscaling=Autoscaling(min_replicas=1, max_replicas=7, metric="concurrency", target=8))
        ''')),
    ("keyword-absent-import-added", _src('''
        """Serving m."""

        from ferry import Deployment, Resources

        d = Deployment(
            name="m",
            model="models:/m/1",
            resources=Resources(cpu="2"),  # two cores
        )
        '''), None, PLAN, _src('''
        """Serving m."""

        from ferry import Autoscaling, Deployment, Resources

        d = Deployment(
            name="m",
            model="models:/m/1",
            resources=Resources(cpu="2"),  # two cores
            autoscaling=Autoscaling(min_replicas=1, max_replicas=7, metric="concurrency", target=8),
        )
        ''')),
    ("keyword-absent-no-trailing-comma", _src('''
        from ferry import Autoscaling, Deployment

        d = Deployment(
            name="m",
            model="models:/m/1"  # pinned
        )
        '''), None, PLAN, _src('''
        from ferry import Autoscaling, Deployment

        d = Deployment(
            name="m",
            model="models:/m/1",  # pinned
            autoscaling=Autoscaling(min_replicas=1, max_replicas=7, metric="concurrency", target=8)
        )
        ''')),
    ("keyword-absent-paren-after-the-last", _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m",
                       model="models:/m/1")  # the model
        '''), None, PLAN, _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m",
                       model="models:/m/1",
                       autoscaling=Autoscaling(min_replicas=1, max_replicas=7, metric="concurrency", target=8))  # the model
        ''')),
    ("multi-line-keywords-missing", _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m", model="models:/m/1", autoscaling=Autoscaling(
            metric="concurrency",
            scale_down_stabilization_seconds=60,  # a minute
        ))
        '''), None, PLAN, _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m", model="models:/m/1", autoscaling=Autoscaling(
            metric="concurrency",
            scale_down_stabilization_seconds=60,  # a minute
            min_replicas=1,
            max_replicas=7,
            target=8,
        ))
        ''')),
    ("keyword-absent-parenthesized-import", _src('''
        from ferry import (
            Deployment,
            Resources,
        )

        d = Deployment(name="m", model="models:/m/1")
        '''), None, PLAN, _src('''
        from ferry import (
            Autoscaling,
            Deployment,
            Resources,
        )

        d = Deployment(name="m", model="models:/m/1", autoscaling=Autoscaling(min_replicas=1, max_replicas=7, metric="concurrency", target=8))
        ''')),
    ("keyword-absent-module-attribute", _src('''
        import ferry

        d = ferry.Deployment(name="m", model="models:/m/1")
        '''), None, PLAN, _src('''
        import ferry

        d = ferry.Deployment(name="m", model="models:/m/1", autoscaling=ferry.Autoscaling(min_replicas=1, max_replicas=7, metric="concurrency", target=8))
        ''')),
    ("aliases-kept", _src('''
        from ferry import Autoscaling as A, Deployment as D
        d = D(name="m", model="models:/m/1", autoscaling=A(target=3))
        e = D(name="n", model="models:/m/1")
        '''), "n", PLAN, _src('''
        from ferry import Autoscaling as A, Deployment as D
        d = D(name="m", model="models:/m/1", autoscaling=A(target=3))
        e = D(name="n", model="models:/m/1", autoscaling=A(min_replicas=1, max_replicas=7, metric="concurrency", target=8))
        ''')),
    ("nested-inside-promotion", _src('''
        from ferry import Autoscaling, Deployment, Promotion

        promotion = Promotion(
            model="digits-classifier",
            environments=("staging", "production"),
            deployment=Deployment(name="digits", model="models:/digits-classifier@champion",
                                  autoscaling=Autoscaling(min_replicas=0, max_replicas=5, metric="concurrency", target=32)),
        )
        '''), None, PLAN, _src('''
        from ferry import Autoscaling, Deployment, Promotion

        promotion = Promotion(
            model="digits-classifier",
            environments=("staging", "production"),
            deployment=Deployment(name="digits", model="models:/digits-classifier@champion",
                                  autoscaling=Autoscaling(min_replicas=1, max_replicas=7, metric="concurrency", target=8)),
        )
        ''')),
    ("two-deployments-chosen-by-name", _src('''
        from ferry import Autoscaling, Deployment, Resources

        web = Deployment(name="digits", model="models:/d@champion",
                         autoscaling=Autoscaling(min_replicas=0, max_replicas=5, metric="concurrency", target=32))
        gpu = Deployment(name="digits-gpu", model="models:/d@champion", mode="standard",
                         resources=Resources(cpu="4", memory="16Gi", gpu=1),
                         autoscaling=Autoscaling(min_replicas=1, max_replicas=8, metric="gpu-utilization", target=70,
                                                 scale_down_stabilization_seconds=600))
        '''), "digits-gpu", dict(PLAN, metric="queue-depth", target=2), _src('''
        from ferry import Autoscaling, Deployment, Resources

        web = Deployment(name="digits", model="models:/d@champion",
                         autoscaling=Autoscaling(min_replicas=0, max_replicas=5, metric="concurrency", target=32))
        gpu = Deployment(name="digits-gpu", model="models:/d@champion", mode="standard",
                         resources=Resources(cpu="4", memory="16Gi", gpu=1),
                         autoscaling=Autoscaling(min_replicas=1, max_replicas=7, metric="queue-depth", target=2,
                                                 scale_down_stabilization_seconds=600))
        ''')),
    # columns are UTF-8 byte offsets: text before the call on its line must not shift the edit
    ("non-ascii-before-the-call", _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m", model="models:/m/1", annotations={"note": "modèle à l'échelle"}, autoscaling=Autoscaling(target=3))  # é
        '''), None, dict(target=9), _src('''
        from ferry import Autoscaling, Deployment
        d = Deployment(name="m", model="models:/m/1", annotations={"note": "modèle à l'échelle"}, autoscaling=Autoscaling(target=9))  # é
        ''')),
    ("crlf-line-endings", 'from ferry import Autoscaling, Deployment\r\nd = Deployment(name="m", model="models:/m/1",\r\n'
                          '    autoscaling=Autoscaling(min_replicas=0, target=3))\r\n', None, dict(min_replicas=1, target=4),
     'from ferry import Autoscaling, Deployment\r\nd = Deployment(name="m", model="models:/m/1",\r\n'
     '    autoscaling=Autoscaling(min_replicas=1, target=4))\r\n'),
]


@pytest.mark.parametrize("source, name, values, expected", [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_rewrites_keep_every_other_byte(source, name, values, expected):
    assert rewrite_autoscaling(source, name, values, path="deploy.py") == expected
    # idempotent: a second rewrite with the same values changes nothing
    assert rewrite_autoscaling(expected, name, values, path="deploy.py") == expected


REFUSALS = [
    ("no-deployment", "from ferry import TrainingJob\n", None, ["deploy.py", "defines no Deployment"]),
    ("ambiguous", 'from ferry import Deployment\na = Deployment(name="a", model="models:/m/1")\n'
                  'b = Deployment(name="b", model="models:/m/1")\n', None,
     ["deploy.py", "defines 2 Deployments", "'a' (line 2)", "'b' (line 3)", "name the one"]),
    ("unknown-name", 'from ferry import Deployment\na = Deployment(name="a", model="models:/m/1")\n', "zz",
     ["deploy.py", "no Deployment named 'zz'", "'a' (line 2)"]),
    ("same-name-twice", 'from ferry import Deployment\na = Deployment(name="a", model="models:/m/1")\n'
                        'b = Deployment(name="a", model="models:/m/2")\n', "a",
     ["deploy.py", "2 Deployments are named 'a'", "autoscaling=Autoscaling(min_replicas=1"]),
    ("autoscaling-a-variable", 'from ferry import Autoscaling, Deployment\nscaling = Autoscaling(target=3)\n'
                               'd = Deployment(name="d", model="models:/m/1", autoscaling=scaling)\n', None,
     ["deploy.py:3", "autoscaling=scaling", "not a literal Autoscaling(...) call",
      'autoscaling=Autoscaling(min_replicas=1, max_replicas=7, metric="concurrency", target=8)']),
    ("deployment-star-star", 'from ferry import Deployment\nbase = {}\nd = Deployment(name="d", model="models:/m/1", **base)\n',
     None, ["deploy.py:3", "**keywords", "autoscaling=Autoscaling("]),
    ("autoscaling-star-star", 'from ferry import Autoscaling, Deployment\nbase = {}\n'
                              'd = Deployment(name="d", model="models:/m/1", autoscaling=Autoscaling(**base, target=3))\n',
     None, ["deploy.py:3", "**keywords", "by hand"]),
    ("syntax-error", "d = Deployment(\n", None, ["deploy.py:1", "not valid Python"]),
]


@pytest.mark.parametrize("source, name, needles", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_file_and_the_fix(source, name, needles):
    with pytest.raises(ConfigError) as caught:
        rewrite_autoscaling(source, name, PLAN, path="deploy.py")
    for needle in needles:
        assert needle in str(caught.value)


def test_unknown_field_and_the_block():
    with pytest.raises(ConfigError, match="no field.*replicas"):
        rewrite_autoscaling('Deployment(name="d", model="models:/m/1")\n', None, {"replicas": 3})
    assert autoscaling_block(dict(target=8, metric="rps", max_replicas=7, min_replicas=0)) == \
        'autoscaling=Autoscaling(min_replicas=0, max_replicas=7, metric="rps", target=8)'


# ---- the round trip: Ferry's loader and renderer before and after -----------------------------
MODEL = ResolvedModel(storage_uri="models:/digits-classifier/3", model_format="pytorch", name="digits-classifier",
                      version="3", source="mlflow-artifacts:/1/abc/artifacts/model")
SCALING_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling"}


def _deployment(path, name):
    loaded = load_specs([path], kinds=(Deployment, Promotion))
    found = [s.spec for s in loaded if isinstance(s.spec, Deployment)]
    found += [s.spec.deployment for s in loaded if isinstance(s.spec, Promotion) and s.spec.deployment is not None]
    return next(d for d in found if name is None or d.name == name)


ROUND_TRIPS = [
    # the repository's own files, and a Deployment that had no autoscaling
    ("deploy-serverless", "jobs/digits/deploy.py", "digits", dict(min_replicas=1, max_replicas=7, metric="rps", target=242)),
    ("deploy-standard", "jobs/digits/deploy.py", "digits-gpu", dict(min_replicas=1, max_replicas=12, metric="queue-depth", target=2)),
    ("promotion-nested", "jobs/digits/job.py", None, PLAN),
    ("added", None, None, PLAN),
]
ADDED = _src('''
    from ferry import Deployment, Resources

    web = Deployment(
        name="plain",
        model="models:/digits-classifier@champion",
        resources=Resources(cpu="2", memory="1Gi"),
    )
    ''')


@pytest.mark.parametrize("file, name, values", [r[1:] for r in ROUND_TRIPS], ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip_changes_only_the_scaling(file, name, values, repo, tmp_path):
    before = (repo / file).read_text() if file else ADDED
    after = rewrite_autoscaling(before, name, values, path=file or "deploy.py")
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    # job.py imports only ferry and ferry.images: copied alone, it loads the same
    (tmp_path / "before" / "deploy.py").write_text(before)
    (tmp_path / "after" / "deploy.py").write_text(after)
    old = _deployment(tmp_path / "before" / "deploy.py", name)
    new = _deployment(tmp_path / "after" / "deploy.py", name)
    for key, value in values.items():
        assert getattr(new.autoscaling, key) == value
    rendered_old, rendered_new = render_inferenceservice(old, MODEL), render_inferenceservice(new, MODEL)
    pred_old, pred_new = rendered_old["spec"]["predictor"], rendered_new["spec"]["predictor"]
    changed = {k for k in pred_old.keys() | pred_new.keys() if pred_old.get(k) != pred_new.get(k)}
    assert changed and changed <= SCALING_FIELDS
    rest = lambda r: {**r, "spec": {"predictor": {k: v for k, v in r["spec"]["predictor"].items() if k not in SCALING_FIELDS}}}  # noqa: E731
    assert rest(rendered_old) == rest(rendered_new)
    assert (pred_new["minReplicas"], pred_new["maxReplicas"]) == (values["min_replicas"], values["max_replicas"])
    # the diff touches the autoscaling lines (and the import that names Autoscaling) and nothing else
    diff = [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    added = [line[1:] for line in diff if line.startswith("+")]
    removed = [line[1:] for line in diff if line.startswith("-")]
    assert added and all("Autoscaling" in line for line in added), diff
    for line in removed:  # an autoscaling line, or the import that now names Autoscaling too
        assert "Autoscaling" in line or line.replace("import ", "import Autoscaling, ") in added, diff
