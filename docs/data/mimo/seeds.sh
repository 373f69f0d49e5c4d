cd /work/wt-mimo
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
E=/tmp/mimo/exp
A="--task mnist1d --layer lru --norm batch --activation gelu_tanh --d-model 64 --n-layers 4 --epochs 15 --quiet --json"
for s in 1 2; do
  .venv/bin/edgessm train $A --d-state 64 --seed $s --reduce-energy 0.9 --reduce-until 0.2 --reduce-min-drop 0.05 -o $E/s$s-it.safetensors > $E/s$s-it.json 2>/dev/null
  n=$(python3 -c "import json; r=json.load(open('$E/s$s-it.json'))['ranks']; print(round(sum(r)/len(r)))")
  .venv/bin/edgessm train $A --d-state $n --seed $s -o $E/s$s-small.safetensors > $E/s$s-small.json 2>/dev/null
  .venv/bin/edgessm train $A --d-state 64 --seed $s -o $E/s$s-full.safetensors > $E/s$s-full.json 2>/dev/null
  .venv/bin/edgessm compress $E/s$s-full.safetensors --rank $n -o $E/s$s-bt.safetensors --json > $E/s$s-bt-c.json 2>/dev/null
  .venv/bin/edgessm eval $E/s$s-bt.safetensors --task mnist1d --json > $E/s$s-bt-e.json 2>/dev/null
done
echo done > $E/DONE_SEEDS
