#!/usr/bin/env bash
# Reproduces the paper's T5 experiments (v1 grid) by calling tpv.py, then writes results/README.md.
#
#   ./run.sh                                    # t5-base, origins 0-9, 6 source and 6 target tasks
#   ./run.sh --origins 0,1,2 --jobs 4           # fewer origins; 4 runs at a time, one GPU each
#   ./run.sh --quick                            # a minutes-long smoke version: tiny random T5, dataset samples
#
# Stop it at any time and start it again: finished runs are skipped, interrupted ones resume.
# Options: --origins LIST|A-B  --tasks SOURCES  --shots LIST  --model NAME  --jobs N  --quick
#          --out DIR (runs)  --results DIR (results)  --data-dir DIR (data_cache)  --samples DIR (../shared/data)
set -euo pipefail
cd "$(dirname "$0")"

ORIGINS=0-9
SOURCES=mnli,qnli,sst2,yelp_polarity,dbpedia,trec
# few-shot groups (paper §6b): two source tasks -> their target tasks
TRANSFER="mnli,qnli:scitail,snli dbpedia,trec:ag_news,yahoo sst2,yelp_polarity:imdb,sst5"
SHOTS=0,5,10,25,50,100,250,500,750,1000
MODEL=t5-base JOBS=1 QUICK=0 OUT=runs RESULTS=results DATA_DIR=${TPV_DATA:-data_cache} SAMPLES=../shared/data
PYTHON=${PYTHON:-python}
while [ $# -gt 0 ]; do
  case "$1" in
    --origins) ORIGINS=$2; shift ;;
    --tasks) SOURCES=$2; shift ;;
    --shots) SHOTS=$2; shift ;;
    --model) MODEL=$2; shift ;;
    --jobs) JOBS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    --data-dir) DATA_DIR=$2; shift ;;
    --samples) SAMPLES=$2; shift ;;
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see ./run.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
EXTRA=()  # options every training run gets
SCORING=()  # options every evaluation gets
if [ "$QUICK" = 1 ]; then
  # tasks whose samples hold a train and a held-out split; tiny runs; a random tiny T5 with T5's vocabulary
  ORIGINS=0-1 SOURCES=sst2,cola,trec TRANSFER="sst2,cola:rte" SHOTS=0,5
  MODEL=$OUT/tiny-t5
  EXTRA=(--max-steps 12 --eval-every 6 --warmup 2 --log-every 6 --scoring rank)
  SCORING=(--scoring rank)  # a random tiny model never stops generating: rank the label words instead
  [ -f "$MODEL/config.json" ] || $PYTHON tpv.py tiny-model "$MODEL" --spiece "$SAMPLES/../assets/t5-spiece.model"
fi
case "$ORIGINS" in *-*) ORIGINS=$(seq -s, "${ORIGINS%-*}" "${ORIGINS#*-}") ;; esac
IFS=, read -r -a origins <<< "$ORIGINS"
IFS=, read -r -a sources <<< "$SOURCES"
IFS=, read -r -a shots <<< "$SHOTS"
COMMON=(--model "$MODEL" --out "$OUT" --data-dir "$DATA_DIR")
RUNS=$OUT/$(basename "$MODEL")
LOGS=$OUT/logs
mkdir -p "$LOGS"
FAILED=$LOGS/failed.txt
: > "$FAILED"

# run_all: runs the command lines on stdin, JOBS at a time; worker k takes every JOBS-th line, on GPU k
run_all() {
  local lines gpus k
  mapfile -t lines
  gpus=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
  for ((k = 0; k < JOBS; k++)); do
    (
      for ((i = k; i < ${#lines[@]}; i += JOBS)); do
        name=$(echo "${lines[i]}" | tr -c 'A-Za-z0-9_,+.\n-' '_' | cut -c1-120)
        if [ "$gpus" -gt 0 ]; then
          export CUDA_VISIBLE_DEVICES=$((k % gpus))
        else  # CPU jobs share the cores: more threads than cores makes every job crawl
          export OMP_NUM_THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))
        fi
        echo "[$((i + 1))/${#lines[@]}] ${lines[i]}"
        bash -c "${lines[i]}" > "$LOGS/$name.log" 2>&1 || { echo "FAILED (see $LOGS/$name.log): ${lines[i]}";
                                                            echo "${lines[i]}" >> "$FAILED"; }
      done
    ) &
  done
  wait
}

# train_cmd NAME ARGS...: the command for one run, or nothing when it finished already (resumes a checkpoint)
train_cmd() {
  local origin=$1 name=$2; shift 2
  local file=$RUNS/origin_$origin/$name
  [ -f "$file.json" ] && return 0
  local resume=""
  [ -f "$file.ckpt.safetensors" ] && resume=--resume
  echo "$PYTHON tpv.py train $* --origin $origin --name '$name' ${COMMON[*]} ${EXTRA[*]} $resume --force"
}

echo "== data"
for task in "${sources[@]}" $(for g in $TRANSFER; do echo "${g#*:}" | tr , ' '; done); do
  [ -f "$DATA_DIR/$task/train.jsonl" ] && continue
  if [ "$QUICK" = 1 ]; then
    $PYTHON tpv.py prepare "$task" --from "$SAMPLES/$task" --data-dir "$DATA_DIR" --model "$MODEL" > /dev/null
  else
    $PYTHON tpv.py download-data "$task" --data-dir "$DATA_DIR" --model "$MODEL"
  fi
done

echo "== source prompts and multi-task SPoT prompts"
{
  for o in "${origins[@]}"; do
    for task in "${sources[@]}"; do train_cmd "$o" "$task" "$task"; done
    for g in $TRANSFER; do train_cmd "$o" "${g%%:*}" "${g%%:*}"; done
  done
} | run_all

echo "== zero-shot addition of every pair"
{
  for o in "${origins[@]}"; do
    for ((a = 0; a < ${#sources[@]}; a++)); do
      for ((b = a + 1; b < ${#sources[@]}; b++)); do
        pair=${sources[a]}+${sources[b]}
        [ -f "$RUNS/origin_$o/$pair.json" ] ||
          echo "$PYTHON tpv.py add ${sources[a]} ${sources[b]} --origin $o ${COMMON[*]} ${SCORING[*]}"
      done
    done
  done
} | run_all

if [ ${#origins[@]} -gt 1 ]; then
  echo "== cross-origin"
  $PYTHON tpv.py cross-origin "${sources[@]}" --origins "$ORIGINS" --results "$RESULTS" "${COMMON[@]}" "${SCORING[@]}" \
    > "$LOGS/cross-origin.log" 2>&1 || { echo "FAILED: cross-origin (see $LOGS/cross-origin.log)"; echo cross-origin >> "$FAILED"; }
fi

echo "== similarity"
$PYTHON tpv.py similarity "${sources[@]}" --origins "$ORIGINS" --results "$RESULTS" "${COMMON[@]}" > "$LOGS/similarity.log" 2>&1 \
  || { echo "FAILED: similarity (see $LOGS/similarity.log)"; echo similarity >> "$FAILED"; }

echo "== few-shot transfer: random origin, single-source SPoT, multi-task SPoT, TPV sum"
{
  for o in "${origins[@]}"; do
    for g in $TRANSFER; do
      pair=${g%%:*} a=${pair%%,*} b=${pair#*,}
      IFS=, read -r -a targets <<< "${g#*:}"
      for target in "${targets[@]}"; do
        for n in "${shots[@]}"; do
          train_cmd "$o" "${target}_${n}shots" "$target" --shots "$n"
          for init in "$a" "$b" "$pair" "$a+$b"; do
            train_cmd "$o" "${target}_${n}shots_init-$init" "$target" --shots "$n" --init "$init"
          done
        done
      done
    done
  done
} | run_all

echo "== report"
$PYTHON tpv.py report --results "$RESULTS" "${COMMON[@]}"
if [ -s "$FAILED" ]; then
  echo "run.sh: $(wc -l < "$FAILED") step(s) failed (listed in $FAILED); run ./run.sh again to retry them" >&2
  exit 1
fi
