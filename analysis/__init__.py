"""MLflow runs -> pandas -> statistics -> figures, tables and a Markdown report.

    python -m analysis report [--tracking-uri URI] [--experiment NAME] [--out DIR] [--x budget|total|stored|nonzero]
    python -m analysis ui [--tracking-uri URI] [--port P]

Modules: `load` (runs into frames), `stats` (intervals and tests over seeds), `tables`, `figures`,
`breakdown` (parameters by role), `reference` (the authors' committed numbers), `report` (REPORT.md).
"""
