"""``ferry init``: a new project a team can run at once, then make its own.

    create_project("fraud-detector")    # ./fraud-detector/: pyproject.toml, Dockerfile, README.md,
                                        # fraud_detector/{job,train,deploy}.py, .gitignore, ...

The files come from the templates in ``templates/`` (package data), filled in with the
project's name, its package and Ferry's training image. Nothing here imports torch or mlflow.
"""

from ferry.scaffold._project import MAX_NAME, Project, check_name, create_project, name_problem, package_name, render_files

__all__ = ["MAX_NAME", "Project", "check_name", "create_project", "name_problem", "package_name", "render_files"]
