#!/usr/bin/env bash
# Reproduces the paper's experiments by calling tpv.py, then writes results/README.md: the v1 grid of T5, or the
# grid of the LLM runs (v3) for a decoder-only --model.
#
#   ./run.sh                                    # t5-base, origins 0-9, 6 source and 6 target tasks
#   ./run.sh --model meta-llama/Llama-3.1-8B-Instruct --family llama   # origins 0-2, 11 source tasks
#   ./run.sh --origins 0,1,2 --jobs 4           # fewer origins; 4 packs at a time, one GPU each
#   ./run.sh --quick                            # a minutes-long smoke version: tiny random T5, dataset samples
#   ./run.sh --mini                             # the experiments in miniature on SmolLM2-135M, on a CPU (~2 h)
#   ./run.sh --plan                             # the grid as commands, one a line, to run anywhere
#   ./run.sh --slurm --time 2-00:00:00          # the grid as Slurm array jobs, one GPU per command
#
# Training runs in packs: one tpv.py train command trains a source task (or a multi-task pair) on every origin,
# or a target task with one shot count on every origin from each of the five initialisations, sharing its steps.
#
# Options:
#   --origins LIST   origins 0..9, a comma list of numbers and ranges A-B with A <= B, e.g. 0-2,5 (default: the
#                    model family's grid: T5 0-9, decoder-only 0-2)
#   --tasks LIST     source tasks (default: the family's grid: T5 mnli,qnli,sst2,yelp_polarity,dbpedia,trec;
#                    decoder-only those and qqp,mrpc,rte,cola,stsb); the few-shot transfer runs for the paper's
#                    source pairs that are both in the list
#   --shots LIST     few-shot training set sizes, integers >= 0 (default 0,5,10,25,50,100,250,500,750,1000)
#   --model NAME     a model folder or a hub name (default t5-base); its family (config.json's model_type) picks
#                    the grid's defaults and the recipe (see "The model's family" below)
#   --family NAME    the family of a hub name that is not downloaded yet: t5 (default) or llama
#   --loss MODE      decoder-only models: the training loss, full (default: the whole chat text, as the paper's
#                    runs) or answer (tpv.py train --loss)
#   --pack N         at most N runs share a training step; a pack with more runs trains them N at a time
#                    (default: tpv.py train's estimate from the memory)
#   --jobs N         packs (and additions) at a time, one GPU each when there are GPUs (default 1)
#   --out DIR        runs and logs (default runs)
#   --results DIR    tables and plots (default results)
#   --data-dir DIR   the data cache (default $TPV_DATA, else data_cache; --mini: DIR/data, DIR: --out)
#   --samples DIR    the dataset samples that --quick and --mini prepare their data from (default ../shared/data)
#   --quick          a smoke run: 12 training steps, label words ranked, data from --samples, few-shot transfer
#                    sst2,cola -> rte; it only changes the defaults of the options you did not give: --origins 0-1
#                    --tasks sst2,cola,trec --shots 0,5 and, for --model, a random tiny T5 written to
#                    DIR/tiny-t5 (DIR: --out)
#   --mini           the paper's experiments in miniature on a small decoder-only chat model, on a CPU, with the
#                    dataset samples (docs/real-model.md); like --quick it changes only the defaults of the options
#                    you did not give: --model HuggingFaceTB/SmolLM2-135M-Instruct --origins 0-2 --tasks sst2,trec
#                    --shots 0,16,64 --loss answer --out runs/mini --results results/mini, data prepared from
#                    --samples into DIR/data (DIR: --out). It trains with --lr 0.01 (the recipe's 0.3 is too large
#                    for a small model, docs/llama.md), 150 steps (few-shot 50), validation every 25, label words
#                    ranked; sums and few-shot transfer (sst2,trec -> sst5: from the origin, from sst2 and from the
#                    sum) on the first origin only, no multi-task runs; and adds two baselines per source task (its
#                    untuned origins, the model without a prompt: tpv.py train --shots 0 --prompt-len 0) and the
#                    first source task trained with the other --loss on every origin
#   --plan           print every command of the grid, one a line (see below); writes nothing, runs nothing
#   --slurm          write the grid as Slurm array jobs to DIR/slurm (DIR: --out; see below); needs no Slurm here
#   --partition P    --slurm: the partition, or a comma list of them (default: the cluster's default)
#   --time T         --slurm: each array task's time limit: minutes, HH:MM:SS or D-HH:MM:SS (default: the
#                    partition's); each task gets SIGTERM 120 s before it (#SBATCH --signal=B:TERM@120), on
#                    which tpv.py saves its checkpoint: run submit.sh again to resume
#   --estimate       time a few packed training steps of --model here and print the device-hours of the
#                    commands --plan prints (python bench.py estimate --plan -; no data needed, nothing downloaded;
#                    --quick: of the tiny T5, which it writes first when it is not there); --model's config.json,
#                    or the shape of a name bench.py knows (t5-base, Llama-3.1-8B-Instruct, deepseek-llm-7b-chat)
#   -h, --help       this text
#
# The model's family: run.sh asks tpv.py once (python tpv.py info --grid: config.json alone, nothing loaded or
# downloaded) where it can see the model's config.json (a folder, or a hub name downloaded into models/), or when
# --family or --loss is given; a hub name not downloaded yet (or only in the Hugging Face cache) is taken for T5
# unless --family says otherwise, and tpv.py checks --family against the config.json it finds. The family gives
# the grid's defaults (--origins, --tasks: its GRID) and the options it takes; every tpv.py train picks the
# family's recipe itself (decoder-only: 100 prompt vectors, batch 4, cosine schedule, 10 epochs; docs/llama.md).
# Relative paths you give (options, $TPV_DATA) are relative to the folder you run run.sh from; the defaults
# are in run.sh's folder.
# Any path may hold spaces. $PYTHON (default python) is the one program that runs tpv.py.
# Stop it at any time and start it again: finished runs are skipped (a pack whose runs all finished is not
# started, tpv.py skips the finished runs of the others), interrupted packs resume (every pack has --resume).
#
# The grid in stages, and the stages each one needs:
#   model      tpv.py download --model, or --quick's tiny T5
#   data       the tasks' data: download-data, or prepare from --samples           model
#   sources    one pack per source task, every origin                              data
#   multitask  one pack per few-shot source pair (multi-task SPoT), every origin   data
#   sums       zero-shot addition: one add per source pair and origin              sources
#   fewshot    one pack per target task and shot count: every origin x the
#              random origin, each source, the pair's multi-task prompt, the sum   sources, multitask
#   analysis   cross-origin (with 2 origins or more) and similarity                sources
#   report     results/README.md                                                   all of the above
# --plan prints every command of the grid, finished or not (the plan is the same on any machine), in this order,
# one a line after its stage's name and a space, shell-quoted to run with bash -c from run.sh's folder. The
# commands of a stage are independent: run them at once, a stage after the other, e.g. on 4 GPUs with GNU xargs
# (-d '\n': xargs would otherwise undo the quoting) or GNU parallel:
#   ./run.sh --plan > plan.txt
#   for stage in model data sources multitask sums fewshot analysis report; do
#     awk -v s=$stage '$1 == s' plan.txt | cut -d' ' -f2- |
#       xargs -d '\n' -P 4 --process-slot-var=CUDA_VISIBLE_DEVICES -I{} bash -c {} || break
#   done
#   awk '$1 == "sources"' plan.txt | cut -d' ' -f2- | parallel -j 4 'CUDA_VISIBLE_DEVICES=$(({%} - 1))' bash -c {}
# A command whose work is done fails saying so (a pack whose runs all finished exits with 2; a finished addition
# and a prepared sample are refused): to go on with a grid half done, use ./run.sh or --slurm, which skip it.
# --slurm writes DIR/slurm: STAGE.plan (the stage's lines of the plan), STAGE.done (for each line, the files that
# mark it finished), STAGE.sh (an sbatch array job: task i runs line i+1 on one GPU, or exits at once when its
# files are all there) and submit.sh, which runs the model and data stages where you run it (they download, and
# compute nodes often have no internet), then submits the other stages with sbatch, each after the stages it
# needs (--dependency=afterok). Logs: DIR/logs/slurm-STAGE-JOB_TASK.log. After a failure, run submit.sh again.
set -euo pipefail

die() {  # die STATUS MESSAGE: one line on stderr (a newline in a value shows as \n); 2: a mistake in the options
  echo "run.sh: ${2//$'\n'/\\n}" >&2
  exit "$1"
}

ORIGINS="" SOURCES="" SHOTS="" MODEL="" PACK="" JOBS="" OUT="" RESULTS="" DATA_DIR="" SAMPLES="" CACHE=${TPV_DATA-}
QUICK=0 MINI=0 MODE="" PARTITION="" TIME="" FAMILY="" LOSS=""
PYTHON=${PYTHON:-python}
while [ $# -gt 0 ]; do
  option=$1 value=${2-}
  case $option in
    --quick) QUICK=1; shift; continue ;;
    --mini) MINI=1; shift; continue ;;
    --plan|--slurm|--estimate)  # what run.sh does instead of running the grid here: one of them
      [[ -z $MODE || $MODE == "$option" ]] || die 2 "$MODE and $option are different things to do: give one"
      MODE=$option; shift; continue ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;  # the header above
    --origins) ORIGINS=$value ;;
    --tasks) SOURCES=$value ;;
    --shots) SHOTS=$value ;;
    --model) MODEL=$value ;;
    --family) FAMILY=$value ;;
    --loss) LOSS=$value ;;
    --pack) PACK=$value ;;
    --jobs) JOBS=$value ;;
    --out) OUT=$value ;;
    --results) RESULTS=$value ;;
    --data-dir) DATA_DIR=$value ;;
    --samples) SAMPLES=$value ;;
    --partition) PARTITION=$value ;;
    --time) TIME=$value ;;
    *) die 2 "unknown option $option (see ./run.sh --help)" ;;
  esac
  # every option that gets here takes a value: the last argument, "" or the next option is a missing one
  [ -n "$value" ] && [[ $value != --* ]] || die 2 "$option needs a value (see ./run.sh --help)"
  shift 2
done

# The user's relative paths are relative to where they started run.sh: make them absolute before moving to
# run.sh's folder (where tpv.py and the defaults are). A --model that is no folder here is a hub name.
absolute() { local -n path=$1; [[ -z $path || $path == /* ]] || path=$PWD/$path; }
absolute OUT; absolute RESULTS; absolute DATA_DIR; absolute SAMPLES; absolute CACHE
[ -d "$MODEL" ] && absolute MODEL
cd -- "$(dirname -- "$0")"
HERE=$PWD  # absolute: what the Slurm scripts go back to

[[ $QUICK$MINI != 11 ]] || die 2 "--quick and --mini are different grids: give one"
[[ $MINI = 0 || $MODE != --estimate ]] ||
  die 2 "--mini is measured, not estimated: about 2 hours on 2 CPU cores (docs/real-model.md)"
SMALL=$([ "$QUICK" = 1 ] && echo --quick || echo --mini)  # the grid on dataset samples, when one of them is given
# --quick and --mini set defaults only; what the user gave wins (their few-shot groups need both sources in --tasks)
if [ "$MINI" = 1 ]; then
  : "${ORIGINS:=0-2}" "${SOURCES:=sst2,trec}" "${SHOTS:=0,16,64}" "${MODEL:=HuggingFaceTB/SmolLM2-135M-Instruct}"
  : "${LOSS:=answer}" "${OUT:=runs/mini}" "${RESULTS:=results/mini}"
  [[ -n $FAMILY || $MODEL != HuggingFaceTB/SmolLM2-135M-Instruct ]] || FAMILY=llama  # downloaded or not
  TRANSFER=("sst2,trec:sst5")  # the paper's target of SST-2 (its "sst5" was SST-2 by mistake), from the samples
elif [ "$QUICK" = 1 ]; then
  : "${ORIGINS:=0-1}" "${SOURCES:=sst2,cola,trec}" "${SHOTS:=0,5}"
  TRANSFER=("sst2,cola:rte")  # tasks whose samples hold a train and a held-out split
else  # --origins and --tasks: the family's grid, below
  : "${SHOTS:=0,5,10,25,50,100,250,500,750,1000}"
  # few-shot groups (paper §6b): two source tasks -> their target tasks
  TRANSFER=("mnli,qnli:scitail,snli" "dbpedia,trec:ag_news,yahoo" "sst2,yelp_polarity:imdb,sst5")
fi
: "${JOBS:=1}" "${OUT:=runs}" "${RESULTS:=results}" "${SAMPLES:=../shared/data}"
[ "$MINI" = 0 ] || : "${DATA_DIR:=$OUT/data}"  # sample-sized data, kept apart from the full data cache
: "${DATA_DIR:=${CACHE:-data_cache}}"
TINY=0  # 1: --model is --quick's random tiny T5, which run.sh writes
if [ "$QUICK" = 1 ] && [ -z "$MODEL" ]; then MODEL=$OUT/tiny-t5; TINY=1; fi
: "${MODEL:=t5-base}"

# Check every value before anything runs. Whole-list patterns also catch empty items (0,,1) and newlines.
# JOBS and PACK have at most 4 digits: bash arithmetic would wrap a huge number around to a negative one.
[[ $JOBS =~ ^[1-9][0-9]{0,3}$ ]] || die 2 "--jobs must be an integer from 1 to 9999, got '$JOBS'"
[[ -z $PACK || $PACK =~ ^[1-9][0-9]{0,3}$ ]] || die 2 "--pack must be an integer from 1 to 9999, got '$PACK'"
[[ -z $LOSS || $LOSS =~ ^(full|answer)$ ]] || die 2 "--loss must be full or answer, got '$LOSS'"  # instruct.LOSSES
[[ -z $FAMILY || $FAMILY =~ ^[a-z0-9]+$ ]] ||
  die 2 "--family must be a family's name, such as t5 or llama, got '$FAMILY'"
[[ -z $FAMILY || $TINY = 0 ]] || die 2 "--family: --quick's own model is a tiny T5; for another family give --model"
[[ $SHOTS =~ ^(0|[1-9][0-9]*)(,(0|[1-9][0-9]*))*$ ]] ||
  die 2 "--shots must be a comma list of integers >= 0, got '$SHOTS'"
# the Slurm values go into #SBATCH lines as they are: nothing there may need quoting
[[ -z $PARTITION || $MODE == --slurm ]] || die 2 "--partition is for --slurm (give --slurm too)"
[[ -z $TIME || $MODE == --slurm ]] || die 2 "--time is for --slurm (give --slurm too)"
[[ -z $PARTITION || $PARTITION =~ ^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$ ]] ||
  die 2 "--partition must be a partition name or a comma list of them (letters, digits, _ . -), got '$PARTITION'"
[[ -z $TIME || $TIME =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]] ||
  die 2 "--time must be a Slurm time limit: minutes, HH:MM:SS or D-HH:MM:SS, got '$TIME'"
if [[ $TIME == *:* ]]; then  # minutes and seconds below 60; hours below 24 after days (Slurm's own forms)
  IFS=: read -r -a parts <<< "${TIME#*-}"
  for part in "${parts[@]:1}"; do
    [ "$((10#$part))" -lt 60 ] || die 2 "--time: $part is not a number of minutes or seconds (00-59), in '$TIME'"
  done
fi
if [[ $TIME == *-* ]]; then  # D-HH, D-HH:MM, D-HH:MM:SS: hours come first after the days
  hours=${TIME#*-}; hours=${hours%%:*}
  [[ ${#hours} -le 2 && $((10#$hours)) -lt 24 ]] || die 2 "--time: $hours is not a number of hours (0-23) after the days, in '$TIME'"
fi
for pair in "--out:$OUT" "--results:$RESULTS" "--data-dir:$DATA_DIR"; do  # folders tpv.py writes into
  folder=${pair#*:}
  [ ! -e "$folder" ] || [ -d "$folder" ] || die 2 "${pair%%:*}: $folder is a file, not a folder; choose another path"
done

# The model's family (see --help): the one place run.sh asks tpv.py what the model is. Without a config.json to
# read, --family or --loss, it does not ask: the model is taken for T5, and these defaults are T5's GRID
# (model_t5.GRID; tests/test_llm_grid.py checks that they agree).
GRID_ORIGINS=0-9 GRID_TASKS=mnli,qnli,sst2,yelp_polarity,dbpedia,trec
models=${TPV_MODELS:-models}  # where tpv.py downloads a hub name
if [ -n "$FAMILY$LOSS" ] || { [ "$TINY" = 0 ] && [ -f "$MODEL/config.json" -o -f "$models/$MODEL/config.json" ]; }
then
  hint=()
  [ -z "$FAMILY" ] || hint=(--family "$FAMILY")
  [ "$TINY" = 0 ] || hint=(--family t5)  # the tiny T5 run.sh writes, perhaps not written yet
  facts=$("$PYTHON" tpv.py info --grid --model "$MODEL" "${hint[@]}" 2>&1) || {
    facts=${facts#tpv: error: }; die 2 "${facts% (see: python tpv.py info --help)}"; }
  name="" source="" options=""
  while read -r key value; do
    case $key in
      name) name=$value ;; source) source=$value ;; options) options=" $value " ;;
      origins) GRID_ORIGINS=$value ;; tasks) GRID_TASKS=$value ;;
    esac
  done <<< "$facts"
  case $source in  # how tpv.py knows the family
    config.json) source="its config.json" ;; --family) source="--family" ;;
    *) source="a hub name not downloaded yet is taken for one; --family names another family" ;;
  esac
  [ "$TINY" = 0 ] || source="--quick's own model"
  [[ $MINI = 0 || $options == *" loss "* ]] || die 2 "--mini trains a decoder-only chat model (default \
HuggingFaceTB/SmolLM2-135M-Instruct), and $MODEL is a $name model ($source); give --model a decoder-only one \
(a hub name not downloaded yet: with --family llama)"
  [[ -z $LOSS || $options == *" loss "* ]] ||
    die 2 "--loss is not an option of $name models, and $MODEL is one ($source); drop it"
fi
: "${ORIGINS:=$GRID_ORIGINS}" "${SOURCES:=$GRID_TASKS}"
[[ $ORIGINS =~ ^[0-9](-[0-9])?(,[0-9](-[0-9])?)*$ ]] ||
  die 2 "--origins must be a comma list of origins 0..9 and ranges A-B, got '$ORIGINS'"
# task names become file names and parts of run names (a,b is multi-task, a+b a sum): letters, digits and _
[[ $SOURCES =~ ^[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*$ ]] ||
  die 2 "--tasks must be a comma list of task names (letters, digits, _), got '$SOURCES'"
# tpv.py's tasks (data/tasks.py; test_hostile_inputs.py checks that the lists agree): a task tpv does not know is
# refused here, before the first command, not by each of the grid's commands
KNOWN_TASKS=" mnli qnli sst2 yelp_polarity dbpedia trec scitail snli ag_news yahoo imdb sst5 qqp mrpc rte cola stsb "
for task in ${SOURCES//,/ }; do
  [[ $KNOWN_TASKS == *" $task "* ]] || die 2 "--tasks: unknown task '$task'; known tasks:${KNOWN_TASKS% }"
done
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
SPIECE=$SAMPLES/../assets/t5-spiece.model  # the tiny T5's vocabulary
STEPS=() FEWSHOT_STEPS=()  # the training steps of source and multi-task runs, and of few-shot runs
if [ "$QUICK" = 1 ]; then
  EXTRA=(--max-steps 12 --eval-every 6 --warmup 2 --log-every 6 --scoring rank)
  SCORING=(--scoring rank)  # a random tiny model never stops generating: rank the label words instead
elif [ "$MINI" = 1 ]; then  # what 2 CPU cores do in about 2 hours (docs/real-model.md lists each reduction)
  EXTRA=(--lr 0.01 --eval-every 25 --scoring rank) STEPS=(--max-steps 150) FEWSHOT_STEPS=(--max-steps 50)
  SCORING=(--scoring rank)
fi
RECIPE=("${EXTRA[@]}")  # without --loss: --mini's runs with the other loss
[ -z "$LOSS" ] || EXTRA+=(--loss "$LOSS")
COMMON=(--model "$MODEL" --out "$OUT" --data-dir "$DATA_DIR")
PACKING=()
[ -z "$PACK" ] || PACKING=(--pack "$PACK")
RUNS=$OUT/$(basename -- "$MODEL")
NAME=${RUNS##*/}  # the model's name, in the names of the logs
LOGS=$OUT/logs

# The grid, one entry per command: its stage, the name of its log, the files that mark it finished (none: it
# always runs) and the command. The files and the command are kept as one line of shell words: a word of
# letters, digits and _,./:=+@%- as it is, any other shell-quoted with printf %q, which also escapes spaces,
# quotes and newlines (as $'\n'), so that eval or bash -c gives back the very same words.
STAGE=() LOG=() DONE=() COMMAND=()
quote() {  # quote VARIABLE WORD...: VARIABLE becomes the words as one line of shell (no fork: the grid is long)
  local -n line_=$1
  local word
  shift
  line_=""
  for word; do
    [[ -n $word && $word != *[!A-Za-z0-9_,./:=+@%-]* ]] || printf -v word '%q' "$word"
    line_+="$word "
  done
  line_=${line_% }
}
quoted() { local line; quote line "$@"; printf '%s' "$line"; }  # quoted WORD...: the same, printed
entry() {  # entry STAGE LOG FILE... -- COMMAND...
  local stage=$1 log=$2 files=() done command
  shift 2
  while [ "$1" != -- ]; do files+=("$1"); shift; done
  shift
  quote done "${files[@]}"
  quote command "$@"
  STAGE+=("$stage") LOG+=("$log") DONE+=("$done") COMMAND+=("$command")
}
ON=("${origins[@]}")  # the origins a pack trains on: every origin, but --mini's transfer runs on the first only
records() {  # records RUN...: RECORDS becomes the record of each run on each origin of ON; all there: finished
  local o run
  RECORDS=()
  for o in "${ON[@]}"; do for run; do RECORDS+=("$RUNS/origin_$o/$run.json"); done; done
}
pack() {  # pack STAGE LOG TRAIN-ARGUMENTS...: one tpv.py train for the origins ON, finished when RECORDS are there
  local stage=$1 log=$2
  shift 2
  entry "$stage" "$log" "${RECORDS[@]}" -- "$PYTHON" tpv.py train "$@" --origins "$(IFS=,; echo "${ON[*]}")" \
    --resume "${PACKING[@]}" "${COMMON[@]}" "${EXTRA[@]}"
}

if [ "$TINY" = 1 ]; then  # all three files, not just config.json: a tiny-model that died may have left a part
  # --force: what is there is incomplete (an older tpv wrote models in place), so replacing it loses nothing
  entry model tiny-model "$MODEL/config.json" "$MODEL/model.safetensors" "$MODEL/spiece.model" -- \
    "$PYTHON" tpv.py tiny-model "$MODEL" --spiece "$SPIECE" --force
else  # a complete copy is used as it is; otherwise tpv.py train would download it in every pack at once
  entry model download -- "$PYTHON" tpv.py download "$MODEL"
fi
prepared=","
for task in "${sources[@]}" "${targets[@]}"; do
  [[ $prepared == *,$task,* ]] && continue  # a target that is also a source
  prepared+="$task,"
  if [ "$QUICK$MINI" != 00 ]; then
    entry data "data_$task" "$DATA_DIR/$task/train.jsonl" -- \
      "$PYTHON" tpv.py prepare "$task" --from "$SAMPLES/$task" --data-dir "$DATA_DIR" --model "$MODEL"
  else
    entry data "data_$task" "$DATA_DIR/$task/train.jsonl" -- \
      "$PYTHON" tpv.py download-data "$task" --data-dir "$DATA_DIR" --model "$MODEL"
  fi
done
for task in "${sources[@]}"; do
  records "$task"
  pack sources "${NAME}_$task" "$task" "${STEPS[@]}"
done
if [ "$MINI" = 1 ]; then  # baselines of each source task, and the first one trained with the other loss
  for task in "${sources[@]}"; do
    records "${task}_0shots"
    pack sources "${NAME}_${task}_untuned" "$task" --shots 0
    entry sources "${NAME}_${task}_no-prompt" "$RUNS/origin_${origins[0]}/${task}_no-prompt.json" -- \
      "$PYTHON" tpv.py train "$task" --shots 0 --prompt-len 0 --origin "${origins[0]}" "${COMMON[@]}" \
      "${SCORING[@]}" --loss "$LOSS"
  done
  other=full
  [ "$LOSS" != full ] || other=answer
  run=${sources[0]}_loss-$other
  for o in "${origins[@]}"; do
    entry sources "${NAME}_origin_${o}_$run" "$RUNS/origin_$o/$run.json" -- "$PYTHON" tpv.py train "${sources[0]}" \
      --origin "$o" --name "$run" --resume "${COMMON[@]}" "${RECIPE[@]}" --loss "$other" "${STEPS[@]}"
  done
  ON=("${origins[0]}")
else
  for group in "${groups[@]}"; do
    records "${group%%:*}"
    pack multitask "${NAME}_${group%%:*}" "${group%%:*}" "${STEPS[@]}"
  done
fi
for ((a = 0; a < ${#sources[@]}; a++)); do
  for ((b = a + 1; b < ${#sources[@]}; b++)); do
    sum=${sources[a]}+${sources[b]}
    for o in "${ON[@]}"; do
      entry sums "${NAME}_origin_${o}_$sum" "$RUNS/origin_$o/$sum.json" -- \
        "$PYTHON" tpv.py add "${sources[a]}" "${sources[b]}" --origin "$o" "${COMMON[@]}" "${SCORING[@]}"
    done
  done
done
for group in "${groups[@]}"; do
  pair=${group%%:*} a=${pair%%,*} b=${pair#*,}
  IFS=, read -r -a group_targets <<< "${group#*:}"
  for target in "${group_targets[@]}"; do
    for n in "${shots[@]}"; do
      run=${target}_${n}shots
      if [ "$MINI" = 1 ]; then  # from the origin, one source and the sum
        records "$run" "${run}_init-$a" "${run}_init-$a+$b"
        pack fewshot "${NAME}_$run" "$target" --shots "$n" --init origin --init "$a" --init "$a+$b" \
          "${FEWSHOT_STEPS[@]}"
        continue
      fi
      records "$run" "${run}_init-$a" "${run}_init-$b" "${run}_init-$pair" "${run}_init-$a+$b"
      pack fewshot "${NAME}_$run" "$target" --shots "$n" \
        --init origin --init "$a" --init "$b" --init "$pair" --init "$a+$b" "${FEWSHOT_STEPS[@]}"
    done
  done
done
if [ ${#origins[@]} -gt 1 ]; then
  entry analysis cross-origin -- "$PYTHON" tpv.py cross-origin "${sources[@]}" --origins "$ORIGINS" \
    --results "$RESULTS" "${COMMON[@]}" "${SCORING[@]}"
fi
entry analysis similarity -- "$PYTHON" tpv.py similarity "${sources[@]}" --origins "$ORIGINS" --results "$RESULTS" \
  "${COMMON[@]}"
entry report report -- "$PYTHON" tpv.py report --results "$RESULTS" "${COMMON[@]}"
ORDER=(model data sources multitask sums fewshot analysis report)  # as in --help
declare -A NEEDS=([data]=model [sources]=data [multitask]=data [sums]=sources [fewshot]="sources multitask"
                  [analysis]=sources [report]="sources multitask sums fewshot analysis")

finished() {  # finished INDEX: the entry has files that mark it finished, and they are all there
  local files file
  eval "files=(${DONE[$1]})"  # safe: quoted's words
  [ ${#files[@]} -gt 0 ] || return 1
  for file in "${files[@]}"; do [ -e "$file" ] || return 1; done
}
of_stage() {  # of_stage STAGE [pending]: the indices of the stage's entries (pending: those not finished)
  local i
  for i in "${!STAGE[@]}"; do
    [ "${STAGE[i]}" = "$1" ] || continue
    [ "${2-}" = pending ] && finished "$i" && continue
    echo "$i"
  done
}

if [ "$MODE" = --plan ]; then
  for stage in "${ORDER[@]}"; do
    for i in $(of_stage "$stage"); do printf '%s %s\n' "$stage" "${COMMAND[i]}"; done
  done
  exit 0
fi

# --quick's and --mini's data come from their samples, the tiny T5's vocabulary from beside them
if [ "$QUICK$MINI" != 00 ] && [ "$MODE" != --estimate ]; then
  for task in "${sources[@]}" "${targets[@]}"; do  # the data stage prepares the missing ones from there
    [ -f "$DATA_DIR/$task/train.jsonl" ] || [ -d "$SAMPLES/$task" ] ||
      die 2 "$SMALL prepares $task from $SAMPLES/$task, which is not a folder (see --samples)"
  done
fi
if [ "$TINY" = 1 ] && ! finished 0; then
  [ -f "$SPIECE" ] || die 2 "--quick needs T5's vocabulary at $SPIECE (see --samples)"
fi

if [ "$MODE" = --slurm ]; then
  SLURM=$OUT/slurm
  [[ $SLURM == /* ]] || SLURM=$HERE/$SLURM  # the scripts run elsewhere (Slurm copies a job's script)
  mkdir -p -- "$SLURM"
  # --signal: SIGTERM 120 s before the time limit, so that tpv saves its checkpoint and releases its locks (it
  # handles SIGTERM as Ctrl-C). B: signals the batch shell, which is tpv itself (STAGE.sh and line.sh exec, and
  # bash -c runs a single command in place); without B:, Slurm signals only srun job steps, and there are none.
  headers=(--gres=gpu:1 --signal=B:TERM@120)
  [ -z "$PARTITION" ] || headers+=(--partition="$PARTITION")
  [ -z "$TIME" ] || headers+=(--time="$TIME")
  cat > "$SLURM/line.sh" <<EOF
#!/usr/bin/env bash
# line.sh STAGE I (written by run.sh --slurm): runs line I+1 of STAGE.plan with bash -c from run.sh's folder,
# unless the files on line I+1 of STAGE.done (shell words), which mark it finished, are all there.
set -euo pipefail
folder=$(quoted "$SLURM") repository=$(quoted "$HERE")
n=\$((\$2 + 1))
command=\$(sed -n "\${n}p" -- "\$folder/\$1.plan")
[ -n "\$command" ] || { echo "line.sh: \$folder/\$1.plan has no line \$n" >&2; exit 2; }
eval "files=(\$(sed -n "\${n}p" -- "\$folder/\$1.done"))"
if [ \${#files[@]} -gt 0 ]; then  # none: it always runs
  left=0
  for file in "\${files[@]}"; do [ -e "\$file" ] || left=1; done
  [ "\$left" = 1 ] || { echo "\$1 \$n: finished already: \$command"; exit 0; }
fi
echo "\$1 \$n: \$command"
cd -- "\$repository"
exec bash -c "\$command"
EOF
  {
    cat <<EOF
#!/usr/bin/env bash
# submit.sh (written by run.sh --slurm): runs the model and data stages here, one command after another (they
# download: compute nodes often have no internet), then submits the other stages as Slurm array jobs, each
# after the stages it needs, and prints their job ids. Logs: $(quoted "$LOGS")/slurm-STAGE-JOB_TASK.log
set -euo pipefail
folder=$(quoted "$SLURM") logs=$(quoted "$LOGS")
mkdir -p -- "\$logs"  # sbatch writes no log into a missing folder
submit() {  # submit STAGE [JOB_ID...]: the id of STAGE.sh's array job, after the jobs given
  local options=(--parsable --output="\$logs/slurm-\$1-%A_%a.log") after id
  [ \$# -lt 2 ] || { printf -v after ':%s' "\${@:2}"; options+=(--dependency="afterok\$after"); }
  id=\$(sbatch "\${options[@]}" "\$folder/\$1.sh")
  echo "\${id%%;*}"  # --parsable: JOB_ID or JOB_ID;CLUSTER
}
EOF
    submitted=()
    for stage in "${ORDER[@]}"; do
      rm -f -- "$SLURM/$stage.plan" "$SLURM/$stage.done" "$SLURM/$stage.sh"  # a stage an older --slurm had
      mapfile -t indices < <(of_stage "$stage")
      [ ${#indices[@]} -gt 0 ] || continue
      for i in "${indices[@]}"; do printf '%s\n' "${COMMAND[i]}"; done > "$SLURM/$stage.plan"
      for i in "${indices[@]}"; do printf '%s\n' "${DONE[i]}"; done > "$SLURM/$stage.done"
      if [ "$stage" = model ] || [ "$stage" = data ]; then
        echo "for ((i = 0; i < ${#indices[@]}; i++)); do bash \"\$folder/line.sh\" $stage \"\$i\"; done"
        continue
      fi
      {
        echo "#!/usr/bin/env bash"
        echo "#SBATCH --job-name=tpv-$stage"
        echo "#SBATCH --array=0-$((${#indices[@]} - 1))"
        printf '#SBATCH %s\n' "${headers[@]}"
        echo "# One array task per line of $stage.plan (written by run.sh --slurm); submit.sh submits it."
        echo "exec bash $(quoted "$SLURM/line.sh") $stage \"\$SLURM_ARRAY_TASK_ID\""
      } > "$SLURM/$stage.sh"
      after=""
      for need in ${NEEDS[$stage]}; do [[ " ${submitted[*]} " == *" $need "* ]] && after+=" \"\$$need\""; done
      echo "$stage=\$(submit $stage$after)"
      submitted+=("$stage")
    done
    printf 'echo "submitted'
    for stage in "${submitted[@]}"; do printf ' %s $%s' "$stage" "$stage"; done
    printf '"\n'
  } > "$SLURM/submit.sh"
  chmod +x -- "$SLURM"/*.sh
  printf 'wrote %s: an array job per stage (%s), after the model and data stages; submit them with: bash %s\n' \
    "$SLURM" "${submitted[*]}" "$(quoted "$SLURM/submit.sh")"
  exit 0
fi

if [ "$TINY" = 1 ] && ! finished 0; then  # the model stage is this one entry
  eval "command=(${COMMAND[0]})"
  "${command[@]}" || die 1 "tpv.py tiny-model could not write the tiny model to $MODEL (see above)"
fi

if [ "$MODE" = --estimate ]; then  # bench.py prices the lines of the plan, the grid's one definition
  plan=$(for stage in "${ORDER[@]}"; do  # what --plan prints
    for i in $(of_stage "$stage"); do printf '%s %s\n' "$stage" "${COMMAND[i]}"; done
  done)
  exec "$PYTHON" bench.py estimate --plan - --model "$MODEL" <<< "$plan"
fi

mkdir -p -- "$LOGS"
FAILED=$LOGS/failed.txt
: > "$FAILED"

# Progress: under each command, its log, the time since the first command, how many of the commands left to run
# here have finished, and a rough ETA: their mean time times the number left (commands differ a lot).
TOTAL=0 STARTED=0  # the commands to run here, and those started before the current stage
for stage in sources multitask sums analysis fewshot report; do
  TOTAL=$((TOTAL + $(of_stage "$stage" pending | wc -l)))
done
FINISHED=$LOGS/finished.txt  # a line per finished command, from any worker
: > "$FINISHED"
BEGAN=$SECONDS
clock() { printf '%dh%02dm' $(($1 / 3600)) $(($1 % 3600 / 60)); }
progress() {  # progress N COMMAND LOG: the lines before the N-th command starts
  local finished took line
  finished=$(wc -l < "$FINISHED") took=$((SECONDS - BEGAN))
  line="    log: $3; $(clock $took) so far, $finished of $TOTAL done"
  [ "$finished" = 0 ] || line+=", about $(clock $((took * (TOTAL - finished) / finished))) left"
  printf '[%s/%s] %s\n%s\n' "$1" "$TOTAL" "$2" "$line"
}

# run_all INDEX...: runs those entries, JOBS at a time; worker k takes every JOBS-th one, on GPU k.
# Each one's output goes to LOGS/LOG.log.
run_all() {
  local todo=("$@") gpus workers k i command log
  gpus=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
  workers=$((JOBS < ${#todo[@]} ? JOBS : ${#todo[@]}))
  for ((k = 0; k < workers; k++)); do
    (
      for ((i = k; i < ${#todo[@]}; i += workers)); do
        eval "command=(${COMMAND[todo[i]]})"  # safe: quoted's words
        log=$LOGS/${LOG[todo[i]]//[^A-Za-z0-9_,+.-]/_}.log  # a file name without / or spaces
        if [ "$gpus" -gt 0 ]; then
          export CUDA_VISIBLE_DEVICES=$((k % gpus))
        else  # CPU jobs share the cores: more threads than cores makes every job crawl
          export OMP_NUM_THREADS=$(($(nproc) / workers > 0 ? $(nproc) / workers : 1))
        fi
        progress $((STARTED + i + 1)) "${COMMAND[todo[i]]}" "$log"
        "${command[@]}" > "$log" 2>&1 || {
          echo "FAILED (see $log): ${COMMAND[todo[i]]}"
          echo "${COMMAND[todo[i]]}" >> "$FAILED"
        }
        echo >> "$FINISHED"
      done
    ) &
  done
  wait
  STARTED=$((STARTED + ${#todo[@]}))
}
run_stages() {  # run_stages STAGE...: their entries that have not finished, in one pool
  local indices=() stage
  for stage; do mapfile -t -O ${#indices[@]} indices < <(of_stage "$stage" pending); done
  run_all "${indices[@]}"
}

echo "== data"
for i in $(of_stage data pending); do
  eval "command=(${COMMAND[i]})"
  if [ "$QUICK" = 1 ]; then "${command[@]}" > /dev/null; else "${command[@]}"; fi
done

echo "== source prompts and $([ "$MINI" = 1 ] && echo "baselines" || echo "multi-task SPoT prompts")"
run_stages sources multitask

echo "== zero-shot addition of every pair"
run_stages sums

for i in $(of_stage analysis); do  # cross-origin and similarity
  echo "== ${LOG[i]}"
  STARTED=$((STARTED + 1))
  progress "$STARTED" "${COMMAND[i]}" "$LOGS/${LOG[i]}.log"
  eval "command=(${COMMAND[i]})"
  "${command[@]}" > "$LOGS/${LOG[i]}.log" 2>&1 ||
    { echo "FAILED: ${LOG[i]} (see $LOGS/${LOG[i]}.log)"; echo "${LOG[i]}" >> "$FAILED"; }
  echo >> "$FINISHED"
done

echo "== few-shot transfer: random origin, single-source SPoT$([ "$MINI" = 1 ] || echo ", multi-task SPoT"), TPV sum"
run_stages fewshot

echo "== report"
progress $((STARTED + 1)) "${COMMAND[$(of_stage report)]}" "(printed here)"
eval "command=(${COMMAND[$(of_stage report)]})"
"${command[@]}"
if [ -s "$FAILED" ]; then
  echo "run.sh: $(wc -l < "$FAILED") step(s) failed (listed in $FAILED); run ./run.sh again to retry them" >&2
  exit 1
fi
