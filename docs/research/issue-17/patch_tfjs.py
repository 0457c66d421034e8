import json, sys
from tensorflow.python.framework import op_def_registry
from tensorflow.core.framework import types_pb2
j = json.load(open(sys.argv[1])); n = 0
for node in j['modelTopology']['node']:
    a = node.setdefault('attr', {})
    if node['op'] in ('_FusedConv2D', 'FusedDepthwiseConv2dNative') and 'TArgs' not in a:
        a['TArgs'] = {'list': {'type': ['DT_FLOAT'] * int(a.get('num_args', {}).get('i', 0))}}; n += 1
    od = op_def_registry.get(node['op'])
    if od is None: continue
    for at in od.attr:
        if at.name in a or not at.HasField('default_value'): continue
        dv = at.default_value
        kind = dv.WhichOneof('value')
        if kind == 'type': a[at.name] = {'type': types_pb2.DataType.Name(dv.type)}
        elif kind == 'i': a[at.name] = {'i': str(dv.i)}
        elif kind == 'b': a[at.name] = {'b': dv.b}
        elif kind == 'f': a[at.name] = {'f': dv.f}
        elif kind == 's': a[at.name] = {'s': dv.s.decode() if False else __import__('base64').b64encode(dv.s).decode()}
        else: continue
        n += 1
print('patched attrs', n)
json.dump(j, open(sys.argv[2], 'w'))
