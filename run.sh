#!/usr/bin/env bash
# Reproduces the paper's T5 experiments (v1 grid) by calling tpv.py, then writes results/README.md.
#
#   ./run.sh                                    # t5-base, origins 0-9, 6 source and 6 target tasks
#   ./run.sh --origins 0,1,2 --jobs 4           # fewer origins; 4 runs at a time, one GPU each
#   ./run.sh --quick                            # a minutes-long smoke version: tiny random T5, dataset samples
#
# Options:
#   --origins LIST   origins 0..9, a comma list of numbers and ranges A-B with A <= B, e.g. 0-2,5 (default 0-9)
#   --tasks LIST     source tasks (default mnli,qnli,sst2,yelp_polarity,dbpedia,trec); the few-shot transfer
#                    runs for the paper's source pairs that are both in the list
#   --shots LIST     few-shot training set sizes, integers >= 0 (default 0,5,10,25,50,100,250,500,750,1000)
#   --model NAME     a model folder or a hub name (default t5-base)
#   --jobs N         runs at a time, one GPU each when there are GPUs (default 1)
#   --out DIR        runs and logs (default runs)
#   --results DIR    tables and plots (default results)
#   --data-dir DIR   the data cache (default $TPV_DATA, else data_cache)
#   --samples DIR    the dataset samples that --quick prepares its data from (default ../shared/data)
#   --quick          a smoke run: 12 training steps, label words ranked, data from --samples, few-shot transfer
#                    sst2,cola -> rte; it only changes the defaults of the options you did not give: --origins 0-1
#                    --tasks sst2,cola,trec --shots 0,5 and, for --model, a random tiny T5 written to
#                    DIR/tiny-t5 (DIR: --out)
#   -h, --help       this text
#
# Relative paths you give (options, $TPV_DATA) are relative to the folder you run run.sh from; the defaults
# are in run.sh's folder.
# Any path may hold spaces. $PYTHON (default python) is the one program that runs tpv.py.
# Stop it at any time and start it again: finished runs are skipped, interrupted ones resume.
set -euo pipefail

die() {  # die STATUS MESSAGE: one line on stderr (a newline in a value shows as \n); 2: a mistake in the options
  echo "run.sh: ${2//$'\n'/\\n}" >&2
  exit "$1"
}

ORIGINS="" SOURCES="" SHOTS="" MODEL="" JOBS="" OUT="" RESULTS="" DATA_DIR=${TPV_DATA-} SAMPLES="" QUICK=0
PYTHON=${PYTHON:-python}
while [ $# -gt 0 ]; do
  option=$1 value=${2-}
  case $option in
    --quick) QUICK=1; shift; continue ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;  # the header above
    --origins) ORIGINS=$value ;;
    --tasks) SOURCES=$value ;;
    --shots) SHOTS=$value ;;
    --model) MODEL=$value ;;
    --jobs) JOBS=$value ;;
    --out) OUT=$value ;;
    --results) RESULTS=$value ;;
    --data-dir) DATA_DIR=$value ;;
    --samples) SAMPLES=$value ;;
    *) die 2 "unknown option $option (see ./run.sh --help)" ;;
  esac
  # every option that gets here takes a value: the last argument, "" or the next option is a missing one
  [ -n "$value" ] && [[ $value != --* ]] || die 2 "$option needs a value (see ./run.sh --help)"
  shift 2
done

# The user's relative paths are relative to where they started run.sh: make them absolute before moving to
# run.sh's folder (where tpv.py and the defaults are). A --model that is no folder here is a hub name.
absolute() { local -n path=$1; [[ -z $path || $path == /* ]] || path=$PWD/$path; }
absolute OUT; absolute RESULTS; absolute DATA_DIR; absolute SAMPLES
[ -d "$MODEL" ] && absolute MODEL
cd -- "$(dirname -- "$0")"

# --quick sets defaults only; what the user gave wins (its few-shot group needs sst2 and cola in --tasks)
if [ "$QUICK" = 1 ]; then
  : "${ORIGINS:=0-1}" "${SOURCES:=sst2,cola,trec}" "${SHOTS:=0,5}"
  TRANSFER=("sst2,cola:rte")  # tasks whose samples hold a train and a held-out split
else
  : "${ORIGINS:=0-9}" "${SOURCES:=mnli,qnli,sst2,yelp_polarity,dbpedia,trec}"
  : "${SHOTS:=0,5,10,25,50,100,250,500,750,1000}"
  # few-shot groups (paper §6b): two source tasks -> their target tasks
  TRANSFER=("mnli,qnli:scitail,snli" "dbpedia,trec:ag_news,yahoo" "sst2,yelp_polarity:imdb,sst5")
fi
: "${JOBS:=1}" "${OUT:=runs}" "${RESULTS:=results}" "${DATA_DIR:=data_cache}" "${SAMPLES:=../shared/data}"

# Check every value before anything runs. Whole-list patterns also catch empty items (0,,1) and newlines.
# JOBS has at most 4 digits: bash arithmetic would wrap a huge number around to a negative one.
[[ $JOBS =~ ^[1-9][0-9]{0,3}$ ]] || die 2 "--jobs must be an integer from 1 to 9999, got '$JOBS'"
[[ $ORIGINS =~ ^[0-9](-[0-9])?(,[0-9](-[0-9])?)*$ ]] ||
  die 2 "--origins must be a comma list of origins 0..9 and ranges A-B, got '$ORIGINS'"
# task names become file names and parts of run names (a,b is multi-task, a+b a sum): letters, digits and _
[[ $SOURCES =~ ^[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*$ ]] ||
  die 2 "--tasks must be a comma list of task names (letters, digits, _), got '$SOURCES'"
[[ $SHOTS =~ ^(0|[1-9][0-9]*)(,(0|[1-9][0-9]*))*$ ]] ||
  die 2 "--shots must be a comma list of integers >= 0, got '$SHOTS'"
no_duplicates() {  # no_duplicates OPTION ITEM...: a run listed twice would be trained twice, at once with --jobs > 1
  local option=$1 duplicates; shift
  duplicates=$(printf '%s\n' "$@" | sort | uniq -d)
  [ -z "$duplicates" ] || die 2 "$option lists ${duplicates%%$'\n'*} twice"
}
origins=()
IFS=, read -r -a items <<< "$ORIGINS"
for item in "${items[@]}"; do
  [ "${item%-*}" -le "${item#*-}" ] || die 2 "--origins: the range $item is empty (A-B needs A <= B)"
  for ((o = ${item%-*}; o <= ${item#*-}; o++)); do origins+=("$o"); done
done
IFS=, read -r -a sources <<< "$SOURCES"
IFS=, read -r -a shots <<< "$SHOTS"
no_duplicates --origins "${origins[@]}"
no_duplicates --tasks "${sources[@]}"
no_duplicates --shots "${shots[@]}"
ORIGINS=$(IFS=,; echo "${origins[*]}")  # ranges expanded, for tpv.py's --origins

# the few-shot groups whose two sources are both trained here, and their target tasks
groups=() targets=()
for group in "${TRANSFER[@]}"; do
  pair=${group%%:*}
  [[ ,$SOURCES, == *,${pair%%,*},* && ,$SOURCES, == *,${pair#*,},* ]] || continue
  groups+=("$group")
  IFS=, read -r -a items <<< "${group#*:}"
  targets+=("${items[@]}")
done

EXTRA=()  # options every training run gets
SCORING=()  # options every evaluation gets
if [ "$QUICK" = 1 ]; then
  for task in "${sources[@]}" "${targets[@]}"; do  # the data step below prepares the missing ones from there
    [ -f "$DATA_DIR/$task/train.jsonl" ] || [ -d "$SAMPLES/$task" ] ||
      die 2 "--quick prepares $task from $SAMPLES/$task, which is not a folder (see --samples)"
  done
  EXTRA=(--max-steps 12 --eval-every 6 --warmup 2 --log-every 6 --scoring rank)
  SCORING=(--scoring rank)  # a random tiny model never stops generating: rank the label words instead
  if [ -z "$MODEL" ]; then  # a random tiny T5 with T5's vocabulary
    MODEL=$OUT/tiny-t5
    # all three files, not just config.json: a tiny-model that died half-way may have left a partial folder
    complete=1
    for file in config.json model.safetensors spiece.model; do [ -f "$MODEL/$file" ] || complete=0; done
    if [ "$complete" = 0 ]; then
      spiece=$SAMPLES/../assets/t5-spiece.model
      [ -f "$spiece" ] || die 2 "--quick needs T5's vocabulary at $spiece (see --samples)"
      # --force: what is there is incomplete (an older tpv wrote models in place), so replacing it loses nothing
      "$PYTHON" tpv.py tiny-model "$MODEL" --spiece "$spiece" --force ||
        die 1 "tpv.py tiny-model could not write the tiny model to $MODEL (see above)"
    fi
  fi
fi
: "${MODEL:=t5-base}"
COMMON=(--model "$MODEL" --out "$OUT" --data-dir "$DATA_DIR")
RUNS=$OUT/$(basename -- "$MODEL")
LOGS=$OUT/logs
mkdir -p -- "$LOGS"
FAILED=$LOGS/failed.txt
: > "$FAILED"

# The job lists are text, one job a line: job LOG COMMAND... prints the words shell-quoted with printf %q, which
# also escapes spaces, quotes and newlines (as $'\n'), so that run_all's eval gives back the very same words.
job() {
  printf '%q ' "$@"
  printf '\n'
}

# run_all: runs the jobs on stdin, JOBS at a time; worker k takes every JOBS-th job, on GPU k.
# Each job's output goes to LOGS/LOG.log, LOG being the job's first word.
run_all() {
  local lines gpus workers k i words log command shown
  mapfile -t lines
  gpus=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
  workers=$((JOBS < ${#lines[@]} ? JOBS : ${#lines[@]}))
  for ((k = 0; k < workers; k++)); do
    (
      for ((i = k; i < ${#lines[@]}; i += workers)); do
        eval "words=(${lines[i]})"  # safe: every line is job's printf %q output
        log=$LOGS/${words[0]//[^A-Za-z0-9_,+.-]/_}.log  # a file name without / or spaces (--model's name is in it)
        command=("${words[@]:1}")
        printf -v shown '%q ' "${command[@]}"
        shown=${shown% }  # the command as one line to paste into a shell
        if [ "$gpus" -gt 0 ]; then
          export CUDA_VISIBLE_DEVICES=$((k % gpus))
        else  # CPU jobs share the cores: more threads than cores makes every job crawl
          export OMP_NUM_THREADS=$(($(nproc) / workers > 0 ? $(nproc) / workers : 1))
        fi
        echo "[$((i + 1))/${#lines[@]}] $shown"
        "${command[@]}" > "$log" 2>&1 || { echo "FAILED (see $log): $shown"; echo "$shown" >> "$FAILED"; }
      done
    ) &
  done
  wait
}

# train_job ORIGIN NAME ARGS...: the job for one run, or nothing when it finished already (resumes a checkpoint)
train_job() {
  local origin=$1 name=$2; shift 2
  local file=$RUNS/origin_$origin/$name resume=()
  [ -f "$file.json" ] && return 0
  [ -f "$file.ckpt.safetensors" ] && resume=(--resume)
  job "${RUNS##*/}_origin_${origin}_$name" \
    "$PYTHON" tpv.py train "$@" --origin "$origin" --name "$name" "${COMMON[@]}" "${EXTRA[@]}" "${resume[@]}" --force
}

echo "== data"
for task in "${sources[@]}" "${targets[@]}"; do
  [ -f "$DATA_DIR/$task/train.jsonl" ] && continue
  if [ "$QUICK" = 1 ]; then
    "$PYTHON" tpv.py prepare "$task" --from "$SAMPLES/$task" --data-dir "$DATA_DIR" --model "$MODEL" > /dev/null
  else
    "$PYTHON" tpv.py download-data "$task" --data-dir "$DATA_DIR" --model "$MODEL"
  fi
done

echo "== source prompts and multi-task SPoT prompts"
{
  for o in "${origins[@]}"; do
    for task in "${sources[@]}"; do train_job "$o" "$task" "$task"; done
    for group in "${groups[@]}"; do train_job "$o" "${group%%:*}" "${group%%:*}"; done
  done
} | run_all

echo "== zero-shot addition of every pair"
# add_jobs A B: the job adding the vectors of A and B, on every origin where it has not finished yet
add_jobs() {
  local o
  for o in "${origins[@]}"; do
    [ -f "$RUNS/origin_$o/$1+$2.json" ] ||
      job "${RUNS##*/}_origin_${o}_$1+$2" "$PYTHON" tpv.py add "$1" "$2" --origin "$o" "${COMMON[@]}" "${SCORING[@]}"
  done
}
{
  for ((a = 0; a < ${#sources[@]}; a++)); do
    for ((b = a + 1; b < ${#sources[@]}; b++)); do add_jobs "${sources[a]}" "${sources[b]}"; done
  done
} | run_all

if [ ${#origins[@]} -gt 1 ]; then
  echo "== cross-origin"
  "$PYTHON" tpv.py cross-origin "${sources[@]}" --origins "$ORIGINS" --results "$RESULTS" "${COMMON[@]}" "${SCORING[@]}" \
    > "$LOGS/cross-origin.log" 2>&1 || { echo "FAILED: cross-origin (see $LOGS/cross-origin.log)"; echo cross-origin >> "$FAILED"; }
fi

echo "== similarity"
"$PYTHON" tpv.py similarity "${sources[@]}" --origins "$ORIGINS" --results "$RESULTS" "${COMMON[@]}" > "$LOGS/similarity.log" 2>&1 \
  || { echo "FAILED: similarity (see $LOGS/similarity.log)"; echo similarity >> "$FAILED"; }

echo "== few-shot transfer: random origin, single-source SPoT, multi-task SPoT, TPV sum"
{
  for o in "${origins[@]}"; do
    for group in "${groups[@]}"; do
      pair=${group%%:*} a=${pair%%,*} b=${pair#*,}
      IFS=, read -r -a group_targets <<< "${group#*:}"
      for target in "${group_targets[@]}"; do
        for n in "${shots[@]}"; do
          train_job "$o" "${target}_${n}shots" "$target" --shots "$n"
          for init in "$a" "$b" "$pair" "$a+$b"; do
            train_job "$o" "${target}_${n}shots_init-$init" "$target" --shots "$n" --init "$init"
          done
        done
      done
    done
  done
} | run_all

echo "== report"
"$PYTHON" tpv.py report --results "$RESULTS" "${COMMON[@]}"
if [ -s "$FAILED" ]; then
  echo "run.sh: $(wc -l < "$FAILED") step(s) failed (listed in $FAILED); run ./run.sh again to retry them" >&2
  exit 1
fi
