"""Tabulate the five draws of each demo checkpoint in this folder (python aggregate.py)."""
import json,glob,os,statistics as st,re,collections
HERE=os.path.dirname(os.path.abspath(__file__))
D=collections.defaultdict(dict)
for f in glob.glob(os.path.join(HERE,'*_k*.json')):
    m=re.match(r'.*/(\w+?)_k(\d)\.json',f); t,k=m.group(1),int(m.group(2))
    r=json.load(open(f))['metrics']
    D[t][k]=(r['acc']['value'],r['pr']['precision'],r['pr']['recall'],r['fid']['value'])
def arm(p):
    rows=[]
    for t in sorted(D):
        if t.startswith(p) and t[len(p):].isdigit() and len(D[t])==5:
            rec=[D[t][k][2] for k in range(5)]; fid=[D[t][k][3] for k in range(5)]; pre=[D[t][k][1] for k in range(5)]
            rows.append((t,st.mean(rec),st.stdev(rec),min(rec),max(rec),st.mean(fid),st.mean(pre)))
            print(t, 'recall draws', [round(x,3) for x in rec], 'mean %.3f sd %.3f'%(st.mean(rec),st.stdev(rec)), 'FID %.2f sd %.2f'%(st.mean(fid),st.stdev(fid)), 'prec %.3f'%st.mean(pre))
    if rows:
        m=[r[1] for r in rows]
        print(p,'n',len(rows),'mean of run means %.3f sd between runs %.3f; mean within-run sd %.3f; runs >=0.30: %d'%(st.mean(m),st.stdev(m) if len(m)>1 else 0,st.mean([r[2] for r in rows]),sum(x>=0.3 for x in m)))
for p in ('p','l'): arm(p)
