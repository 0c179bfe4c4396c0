import sys, time, torch, torchvision, ttfs_core
from tests import nets
torch.manual_seed(0)
name=sys.argv[1]; size=int(sys.argv[2]) if len(sys.argv)>2 else 64
kw={"num_classes":10}
if name in ("googlenet","inception_v3"): kw.update(aux_logits=False, init_weights=True)
m=getattr(torchvision.models,name)(**kw)
nets.randomise_bn(m, 0, negative=False)
m=m.double().eval()
x=torch.rand(20,3,size,size,dtype=torch.float64)
t=time.time()
snn=ttfs_core.convert(m,x[:16])
t1=time.time()-t
r=snn.run(x[16:])
with torch.no_grad(): ref=m(x[16:])
print(name, len(snn.layers), "rel", float((r.logits-ref).abs().max()/ref.abs().max()), "early", r.early_spikes, "convert %.1fs"%t1, "dec %.1f"%snn.decision_time, "maxin", max(len(l.inputs) for l in snn.layers))
