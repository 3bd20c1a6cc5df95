#!/usr/bin/env bash
# The main job: set up .venv, train the grid of $PROFILE (smoke | quick | converged | paper ...; default
# quick), log every run to MLflow, and regenerate results/$PROFILE/ from the store (tables, figures,
# REPORT.md, the runs themselves in runs/, which `python -m analysis load-study` opens elsewhere, and the
# checkpoints of unfinished runs in in_flight/).  Re-running resumes, on this machine or on another one
# that has the committed results/$PROFILE/.
set -uo pipefail
cd "$(dirname "$0")"
PROFILE="${PROFILE:-quick}"
if [ ! -f "configs/$PROFILE.yaml" ]; then
  echo "run_all.sh: unknown PROFILE '$PROFILE'; choose one of: $(cd configs && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  exit 2
fi
source .ci/venv.sh || exit 1

# Data: $STUDY_DATA_ROOT, else a shared offline copy beside the project, else ./data, fetched and
# md5-checked by `python -m study fetch` (which downloads nothing when the files are there and verify).
if [ -z "${STUDY_DATA_ROOT:-}" ]; then
  if [ -d ../shared/data/cifar-10-batches-bin ]; then STUDY_DATA_ROOT="$(cd ../shared/data && pwd)"
  else
    STUDY_DATA_ROOT="$PWD/data"
    python -m study fetch cifar10 --data-root "$STUDY_DATA_ROOT" || exit 2
  fi
fi
export STUDY_DATA_ROOT
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"

# A study begun on another machine continues here: its committed runs (results/$PROFILE/runs/) go into a
# store that does not hold them yet, and its unfinished runs' checkpoints (results/$PROFILE/in_flight/)
# beside this machine's, so they resume where they stopped (README, "A study that outlives its machine").
if [ -f "results/$PROFILE/runs/runs.jsonl" ]; then
  python -m analysis load-study "results/$PROFILE" --keep-existing || exit $?
fi
if [ -d "results/$PROFILE/in_flight" ]; then
  python -m study carry-in "configs/$PROFILE.yaml" "results/$PROFILE" || exit $?
fi

# Two one-thread workers finish two equal runs in 0.86x the time of one two-thread worker on the 2-core
# CPU of results/BENCHMARKS.md (`python -m study bench`: jobs2_over_sequential), hence two by default.
JOBS="${JOBS:-$([ "$(nproc)" -ge 2 ] && echo 2 || echo 1)}"
python -m study run "configs/$PROFILE.yaml" --jobs "$JOBS"   # live progress on stderr
grid_status=$?
[ $grid_status = 2 ] && exit 2   # bad input: nothing ran
# runs logged by older code (a store that outlived an upgrade) get the breakdown and labels the report reads
python -m study backfill-metadata --experiment "$PROFILE" || exit $?
python -m analysis report --experiment "$PROFILE" --out "results/$PROFILE" || exit $?
# what another machine needs to continue the grid where it stopped short: the runs are in runs/ above
python -m study carry-out "configs/$PROFILE.yaml" "results/$PROFILE" | tail -n 1 || exit $?

cat <<MSG

Results:   $PWD/results/$PROFILE/REPORT.md  (figures/, tables/, and the runs in runs/)
MLflow UI: python -m analysis ui    (it prints the URL of the study's run table)
Elsewhere: python -m analysis load-study results/$PROFILE && python -m analysis ui
MSG
exit $grid_status
