cd /work/wt13
while kill -0 24986 2>/dev/null; do sleep 5; done
N=./target/release/nerp
D=docs/results/format3
for f in a-int8-f16 a-int4-f16; do echo "== /tmp/f3/$f.nerp"; $N inspect /tmp/f3/$f.nerp | sed -n '1,4p'; $N eval /tmp/f3/$f.nerp --json --quiet | tee -a $D/eval.jsonl; done
