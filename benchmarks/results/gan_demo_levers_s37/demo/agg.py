import json, glob, statistics as st
rows = {}
for f in sorted(glob.glob('/work/main/benchmarks/results/gan_demo_levers_s37/demo/*_seed*/results.json')):
    d = json.load(open(f)); v = d['values']
    arm, seed = f.split('/')[-2].split('_seed')
    rows.setdefault(arm, {})[int(seed)] = (d.get('steps'), v['acc']['value'], v['precision']['value'], v['recall']['value'], v['fid']['value'])
for arm, r in rows.items():
    for s in sorted(r):
        print(arm, s, "%d %.3f %.3f %.3f %.2f" % r[s])
    rec = [x[3] for x in r.values()]
    print(arm, "mean recall %.3f sd %.3f n %d, >=0.30: %d; FID %.2f; acc %.3f; steps %d" % (st.mean(rec), st.stdev(rec) if len(rec) > 1 else 0, len(rec), sum(x >= 0.30 for x in rec), st.mean(x[4] for x in r.values()), st.mean(x[1] for x in r.values()), st.mean(x[0] for x in r.values())))
common = sorted(set(rows.get('sm1', {})) & set(rows.get('base', {})))
if common:
    diffs = [rows['sm1'][s][3] - rows['base'][s][3] for s in common]
    print("paired recall diffs", ["%+.3f" % d for d in diffs], "mean %+.3f" % st.mean(diffs))
