// Pixels, shared by the playground and the comparison view: a model's image shape, painting
// answers, the drawing pad's strokes, and a drawing or a file turned into what a model sees.
// Plain functions of the shape they are given ({h, w, c, light}: see imageShape).
"use strict";

const Pixels = (() => {
  // Tableau 10: the colours matplotlib uses for the report's latent scatter.
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  // The pad's longer side, in its own pixels; the other follows the model's aspect ratio.
  const PAD = 280;
  const BRUSH = 22; // pixels of the pad: about MNIST's stroke once scaled to 20/28 of the frame

  // The shape of a model's images, {h, w, c} (c 1: grayscale, 3: RGB), and whether their
  // background is light. From the manifest's input.shape, (C, H, W) whatever the graph's layout;
  // else from image_shape: [H, W] or [H, W, 3] (older services: [C, H, W]).
  function imageShape(info) {
    const input = (info.manifest && info.manifest.input) || {};
    const light = input.background === "light";
    if (Array.isArray(input.shape) && input.shape.length === 3) {
      const [c, h, w] = input.shape;
      return {h, w, c, light};
    }
    const s = info.image_shape || [28, 28];
    if (s.length === 2) return {h: s[0], w: s[1], c: 1, light};
    if (s[2] === 3 || (s[0] !== 1 && s[0] !== 3)) return {h: s[0], w: s[1], c: s[2], light};
    return {h: s[1], w: s[2], c: s[0], light};
  }

  // The shape of one image of an answer: nested H x W (grayscale) or H x W x C (colour) lists.
  // Flat images (the page's own inputs) are of the model's shape.
  function shapeOf(image, fallback) {
    if (!Array.isArray(image) || !Array.isArray(image[0])) return fallback;
    const pixel = image[0][0];
    return {h: image.length, w: image[0].length, c: Array.isArray(pixel) ? pixel.length : 1};
  }

  // Paints one image (nested rows or flat in HWC order, values in [0, 1]; grey or RGB) into a
  // canvas at (dx, dy).
  function paint(canvas, image, shape, dx = 0, dy = 0) {
    const {h, w, c} = shapeOf(image, shape);
    const flat = Array.isArray(image[0]) ? image.flat(2) : image;
    const ctx = canvas.getContext("2d");
    const pixels = ctx.createImageData(w, h);
    const byte = (v) => Math.round(Math.min(1, Math.max(0, v)) * 255);
    for (let i = 0; i < h * w; i++) {
      for (let k = 0; k < 3; k++) pixels.data[4 * i + k] = byte(flat[c * i + (c === 3 ? k : 0)]);
      pixels.data[4 * i + 3] = 255;
    }
    ctx.putImageData(pixels, dx, dy);
  }

  function paintGrid(canvas, images, columns, shape) {
    const {h, w} = shapeOf(images[0], shape);
    const rows = Math.ceil(images.length / columns);
    canvas.width = columns * w;
    canvas.height = rows * h;
    clearCanvas(canvas, background(shape));
    images.forEach((image, i) => paint(canvas, image, shape, (i % columns) * w, Math.floor(i / columns) * h));
  }

  // The colour of the model's background: where nothing is drawn.
  function background(shape) {
    return shape.light ? "#fff" : "#000";
  }

  function clearCanvas(canvas, colour) {
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = colour;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }

  // What the model sees of the pad (or any canvas in its form: see fitPicture), as a
  // Float32Array of h * w * c values in HWC order, or null when nothing is drawn.
  function toModelInput(source, shape) {
    return shape.c === 3 ? wholePicture(source, shape) : centredStrokes(source, shape);
  }

  // A colour model sees the whole pad, resized to its h x w, as the service resizes uploads:
  // colour models are trained on whole pictures (photos), not on strokes placed in a frame.
  function wholePicture(source, shape) {
    const {h, w} = shape;
    const small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    const ctx = small.getContext("2d", {willReadFrequently: true});
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(source, 0, 0, w, h);
    const data = ctx.getImageData(0, 0, w, h).data;
    const paper = shape.light ? 255 : 0;
    const input = new Float32Array(h * w * 3);
    let drawn = false;
    for (let i = 0; i < h * w; i++) {
      for (let k = 0; k < 3; k++) {
        const v = data[4 * i + k];
        if (Math.abs(v - paper) > 24) drawn = true;
        input[3 * i + k] = v / 255;
      }
    }
    return drawn ? input : null;
  }

  // A grayscale model gets MNIST's own preparation (LeCun et al.), at its size: the strokes'
  // bounding box scaled to fit 20/28 of the frame, then placed with its centre of mass at the
  // centre. Without it a drawing that is small or off-centre looks like nothing the model was
  // trained on. Strokes are what differs from the background: bright on dark, or dark on a light
  // background's model.
  function centredStrokes(source, shape) {
    const {h: side_h, w: side_w, light} = shape;
    const ink = (v) => (light ? 255 - v : v);
    const w = source.width, h = source.height;
    const data = source.getContext("2d").getImageData(0, 0, w, h).data;
    let x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (ink(data[4 * (y * w + x)]) > 24) {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
      }
    }
    if (x1 < 0) return null; // nothing drawn
    const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
    const scale = Math.min((side_w * 20) / 28 / bw, (side_h * 20) / 28 / bh);
    const sw = Math.max(1, Math.round(bw * scale)), sh = Math.max(1, Math.round(bh * scale));
    const small = document.createElement("canvas");
    small.width = sw;
    small.height = sh;
    const sctx = small.getContext("2d", {willReadFrequently: true});
    sctx.imageSmoothingEnabled = true;
    sctx.imageSmoothingQuality = "high";
    sctx.drawImage(source, x0, y0, bw, bh, 0, 0, sw, sh);
    const sdata = sctx.getImageData(0, 0, sw, sh).data;
    let mass = 0, cx = 0, cy = 0;
    for (let y = 0; y < sh; y++) {
      for (let x = 0; x < sw; x++) {
        const v = ink(sdata[4 * (y * sw + x)]) / 255;
        mass += v; cx += v * x; cy += v * y;
      }
    }
    cx = mass ? cx / mass : sw / 2;
    cy = mass ? cy / mass : sh / 2;
    const ox = Math.min(side_w - sw, Math.max(0, Math.round(side_w / 2 - 0.5 - cx)));
    const oy = Math.min(side_h - sh, Math.max(0, Math.round(side_h / 2 - 0.5 - cy)));
    const input = new Float32Array(side_h * side_w).fill(light ? 1 : 0);
    for (let y = 0; y < sh; y++) {
      for (let x = 0; x < sw; x++) {
        input[(y + oy) * side_w + x + ox] = sdata[4 * (y * sw + x)] / 255;
      }
    }
    return input;
  }

  // Whether a picture is dark ink on light paper: the mean grey of its border, the outermost ring
  // of its own pixels, above half of white, judged on luminance (ITU-R 601, as Pillow's "L") for a
  // colour picture. The server's "auto" invert rule (service/codecs/images.py, light_background),
  // judged on the file's pixels, not on the letterboxed canvas. The border, not the whole
  // picture: a bright garment filling a dark frame is bright-on-dark already.
  const BORDER_MAX = 4096; // a strip longer than this is scaled down: the mean barely moves
  function lightBorder(bitmap, shape) {
    const w = bitmap.width, h = bitmap.height;
    const strip = (width, height) => {
      const c = document.createElement("canvas");
      c.width = width;
      c.height = height;
      const ctx = c.getContext("2d", {willReadFrequently: true});
      ctx.fillStyle = background(shape); // transparency shows as the background, as on the pad
      ctx.fillRect(0, 0, width, height);
      ctx.imageSmoothingEnabled = true;
      return ctx;
    };
    const parts = [];
    const across = Math.min(w, BORDER_MAX);
    const rows = strip(across, h > 1 ? 2 : 1); // row 0 and the last
    rows.drawImage(bitmap, 0, 0, w, 1, 0, 0, across, 1);
    if (h > 1) rows.drawImage(bitmap, 0, h - 1, w, 1, 0, 1, across, 1);
    parts.push(rows.getImageData(0, 0, across, h > 1 ? 2 : 1).data);
    if (h > 2) { // columns 0 and the last, between those rows
      const down = Math.min(h - 2, BORDER_MAX);
      const cols = strip(w > 1 ? 2 : 1, down);
      cols.drawImage(bitmap, 0, 1, 1, h - 2, 0, 0, 1, down);
      if (w > 1) cols.drawImage(bitmap, w - 1, 1, 1, h - 2, 1, 0, 1, down);
      parts.push(cols.getImageData(0, 0, w > 1 ? 2 : 1, down).data);
    }
    let sum = 0, count = 0;
    for (const d of parts) {
      for (let i = 0; i < d.length; i += 4) {
        sum += Math.round(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]);
        count++;
      }
    }
    return 2 * sum > 255 * count;
  }

  // Draws a picture onto a canvas (the pad, or one of its size) in the form the model takes:
  // for a grayscale model fitted and centred, grey, on the model's background; for a colour model
  // stretched to the whole canvas, in colour, as the service resizes an upload to the model's
  // size. Inverted (255 - value) when `invert`.
  function fitPicture(source, canvas, invert, shape) {
    const ctx = canvas.getContext("2d", {willReadFrequently: true});
    clearCanvas(canvas, background(shape));
    const colour = shape.c === 3;
    let x = 0, y = 0, w = canvas.width, h = canvas.height;
    if (!colour) {
      // In whole pixels, so that only the picture is made grey (and inverted): the letterbox
      // stays the model's background.
      const scale = Math.min(canvas.width / source.width, canvas.height / source.height);
      w = Math.max(1, Math.round(source.width * scale));
      h = Math.max(1, Math.round(source.height * scale));
      x = Math.floor((canvas.width - w) / 2);
      y = Math.floor((canvas.height - h) / 2);
    }
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(source, x, y, w, h);
    const image = ctx.getImageData(x, y, w, h);
    const d = image.data;
    for (let i = 0; i < d.length; i += 4) {
      if (colour) {
        if (invert) for (let k = 0; k < 3; k++) d[i + k] = 255 - d[i + k];
      } else {
        const grey = Math.round(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]);
        d[i] = d[i + 1] = d[i + 2] = invert ? 255 - grey : grey;
      }
    }
    ctx.putImageData(image, x, y);
  }

  function padSize({h, w}) {
    const scale = PAD / Math.max(h, w);
    return [Math.max(1, Math.round(w * scale)), Math.max(1, Math.round(h * scale))];
  }

  // A copy of a canvas's pixels, as a canvas.
  function copyOf(canvas) {
    const copy = document.createElement("canvas");
    copy.width = canvas.width;
    copy.height = canvas.height;
    copy.getContext("2d").drawImage(canvas, 0, 0);
    return copy;
  }

  // Lets mouse, pen and finger draw on `canvas` in the colour `ink()` gives: `changed()` after
  // every mark (live while drawing), `finished()` once a stroke or tap ends.
  function drawStrokes(canvas, {ink: colour, changed, finished}) {
    const ctx = canvas.getContext("2d", {willReadFrequently: true});
    // Set before each mark: clearing the pad and dropping a file change the context's styles.
    const ink = () => {
      ctx.fillStyle = ctx.strokeStyle = colour();
      ctx.lineWidth = BRUSH;
      ctx.lineCap = ctx.lineJoin = "round";
      ctx.beginPath();
    };
    // The pointer drawing the current stroke (mouse, pen or finger) and where it last was; null
    // between strokes. One pointer draws at a time: a second finger does not join the stroke.
    let pen = null;
    const at = (event) => {
      const r = canvas.getBoundingClientRect();
      return [(event.clientX - r.left) * canvas.width / r.width,
              (event.clientY - r.top) * canvas.height / r.height];
    };
    canvas.addEventListener("pointerdown", (event) => {
      if (pen !== null || event.button !== 0) return; // main button, pen tip or finger only
      canvas.setPointerCapture(event.pointerId);
      pen = {id: event.pointerId, last: at(event)};
      // The ink starts where the pointer lands, so a tap leaves a dot, as on paper. A filled
      // disc, not a zero-length line: whether that gets round caps differs between browsers.
      const [x, y] = pen.last;
      ink();
      ctx.arc(x, y, BRUSH / 2, 0, 2 * Math.PI);
      ctx.fill();
      changed();
    });
    canvas.addEventListener("pointermove", (event) => {
      if (pen === null || event.pointerId !== pen.id) return;
      // Every position the pointer reported, also those merged into this event while the page
      // was busy: the stroke has the same shape however loaded the machine is.
      const coalesced = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
      ink();
      ctx.moveTo(...pen.last);
      for (const moved of coalesced.length ? coalesced : [event]) {
        pen.last = at(moved);
        ctx.lineTo(...pen.last);
      }
      ctx.stroke();
      changed();
    });
    const end = (event) => {
      if (pen === null || event.pointerId !== pen.id) return;
      pen = null;
      finished();
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  }

  return {COLOURS, PAD, BRUSH, imageShape, shapeOf, paint, paintGrid, background, clearCanvas,
          toModelInput, lightBorder, fitPicture, padSize, copyOf, drawStrokes};
})();
