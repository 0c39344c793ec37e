#!/usr/bin/env python3
"""perturb.py IN.gguf OUT.gguf PATTERN ulp|REL: a copy of a GGUF whose F32 tensors
with PATTERN in their name are nudged: "ulp" flips the lowest mantissa bit of
every element, REL multiplies each by 1 +- REL. CPU-vs-CPU logits of the two
files measure how far a model amplifies rounding-level differences: the floor
under which a cuda-vs-cpu comparison cannot be expected to go."""
import struct, io, sys, random
src, dst, pat, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
data=bytearray(open(src,"rb").read()); f=io.BytesIO(data)
def rd(fmt): return struct.unpack("<"+fmt, f.read(struct.calcsize("<"+fmt)))
rd("4sI"); nt,nkv=rd("QQ")
def rstr(): (n,)=rd("Q"); return f.read(n).decode("utf-8","replace")
def rval(t):
    sz={0:"B",1:"b",2:"H",3:"h",4:"I",5:"i",6:"f",7:"?",10:"Q",11:"q",12:"d"}
    if t==8: return rstr()
    if t==9:
        (et,)=rd("I"); (n,)=rd("Q"); return [rval(et) for _ in range(n)]
    return rd(sz[t])[0]
align=32
for _ in range(nkv):
    k=rstr(); (t,)=rd("I"); v=rval(t)
    if k=="general.alignment": align=v
infos=[]
for _ in range(nt):
    name=rstr(); (nd,)=rd("I"); ne=rd("Q"*nd); (ty,)=rd("I"); (off,)=rd("Q"); infos.append((name,ty,off,ne))
dstart=(f.tell()+align-1)//align*align
random.seed(1); n=0
for name,ty,off,ne in infos:
    if ty==0 and pat in name:
        for i in range(ne[0]):
            o=dstart+off+4*i; (v,)=struct.unpack_from("<f",data,o)
            if mode=="ulp": (b,)=struct.unpack_from("<I",data,o); struct.pack_into("<I",data,o,b^1)
            else: struct.pack_into("<f",data,o,v*(1+float(mode)*random.choice((-1,1))))
        n+=1
print("perturbed",n,"tensors matching",pat,"by",mode)
open(dst,"wb").write(data)
