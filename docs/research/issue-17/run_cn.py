import sys, os, time, numpy as np, onnxruntime as ort
from PIL import Image
COCO80 = "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush".split()
s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); scale = float(sys.argv[3]); D = sys.argv[2]
inp = s.get_inputs()[0].name
for name in ['astronaut.png','coffee.png','chelsea.png','motorcycle_left.png','rocket.jpg']:
    img = np.asarray(Image.open(os.path.join(D,name)).convert('RGB')); H, W = img.shape[:2]
    x = (np.asarray(Image.fromarray(img).resize((512,512), Image.BILINEAR)).astype(np.float32) * scale)[None]
    t = time.perf_counter(); det = s.run(['tower_0/detections'], {inp: x})[0][0]; dt = time.perf_counter() - t
    out = [(COCO80[int(d[5])], round(float(d[4]),2), [int(d[0]/512*W), int(d[1]/512*H), int(d[2]/512*W), int(d[3]/512*H)]) for d in det if d[4] > 0.3][:5]
    print(f"{name} {W}x{H} {dt*1000:.0f}ms", out)
