# Shared by run.sh and extra.sh: `point NAME OPTIONS...` compresses $model with OPTIONS,
# evaluates the file on the full test set and appends a row to $tsv (log in $here/NAME.log).
bin=${NERP:-target/release/nerp}
cp "$bin" /tmp/nerp-frontier-$$   # a rebuild must not replace the binary mid-run
bin=/tmp/nerp-frontier-$$
pre=mean=0.286,std=0.353
out=$(mktemp -d)
point() {
  local name=$1; shift
  local log=$here/$name.log
  local t0=$(date +%s.%N)
  "$bin" compress "$model" -o "$out/$name.nerp" --preprocess "$pre" "$@" > "$log" 2>&1
  local t1=$(date +%s.%N)
  "$bin" eval "$out/$name.nerp" --original "$model" --json --quiet > "$out/$name.json" 2>> "$log"
  python3 - "$name" "$*" "$out/$name.nerp" "$out/$name.json" "$(echo "$t1 - $t0" | bc)" "$model" >> "$tsv" <<'PY'
import json, os, sys
name, opts, path, js, secs, model = sys.argv[1:]
d = json.load(open(js)); b = os.path.getsize(path); src = os.path.getsize(model)
acc, orig = d["regenerated_accuracy"], d["original_accuracy"]
print(f"{name}\t{opts}\t{b}\t{src/b:.2f}\t{100*acc:.2f}\t{100*orig:.2f}\t{100*(orig-acc):.2f}\t{100*d['agreement']:.2f}\t{float(secs):.1f}")
PY
  tail -1 "$tsv"
}
