// DreamEdit3D frontend extension: shows the four MVDream views (front, right, back, left) as a 2x2 grid inside the
// pack's nodes. Served by ComfyUI at /extensions/<pack folder>/dreamedit3d.js because the pack sets WEB_DIRECTORY = "web".
//
// Where the pictures come from (see nodes/*.py):
//   * OrthoRender, ComponentMask, MVSample return ui.PreviewImage -> the "executed" event carries output.images, four
//     {filename, subfolder, type} items (one per view, in view order), fetched from /view.
//   * MultiViewTextualInversion / MVFineTune (and MVSample while it samples) send progress previews: one JPEG that is
//     already a 2x2 grid of the four views (nodes/_compat.py _preview_image). They arrive as "b_preview_with_metadata"
//     (frontend >= 1.2x, with the node id) or plain "b_preview" (older; then the running node is the target). Each cell
//     shows one quadrant of that picture. Their "text" output (loss) is shown under the grid.
// The grid replaces ComfyUI's own image preview on these nodes (it would show the same pictures a second time).
// Everything is feature-detected: on frontends without addDOMWidget the grid is drawn on the node's canvas instead.
// Nothing here throws when our nodes are absent or an output has no images.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXTENSION = "DreamEdit3D.views";
const GRID_NODES = new Set([
  "DreamEdit3D_OrthoRender",
  "DreamEdit3D_ComponentMask",
  "DreamEdit3D_MVSample",
  "DreamEdit3D_MultiViewTextualInversion",
  "DreamEdit3D_MVFineTune",
]);
const VIEW_NAMES = ["front", "right", "back", "left"]; // our view order: azimuths 90, 180, 270, 0
const WIDGET_NAME = "dreamedit3d_views";
const CORE_PREVIEW_WIDGET = "$$canvas-image-preview"; // ComfyUI's own image preview widget (frontend 1.2x-1.3x)
const MIN_GRID = 160; // px, smallest grid side
const EMPTY_HEIGHT = 22; // px, the widget before the node has run (one line of hint text)
const EMPTY_HINT = "the four views appear here after a run";

function isOurs(node) {
  const cls = node?.comfyClass ?? node?.constructor?.comfyClass ?? node?.type;
  return typeof cls === "string" && GRID_NODES.has(cls);
}

// litegraph keeps node.size in a typed array (not an Array) in newer frontends
function hasSize(node) {
  return !!node?.size && typeof node.size.length === "number" && node.size.length >= 2;
}

function viewUrl(item) {
  if (!item || typeof item.filename !== "string") return null;
  const params = new URLSearchParams({
    filename: item.filename,
    type: item.type ?? "output",
    subfolder: item.subfolder ?? "",
  });
  const rand = typeof app.getRandParam === "function" ? app.getRandParam() : `&rand=${Math.random()}`;
  const route = `/view?${params}${rand}`;
  return typeof api.apiURL === "function" ? api.apiURL(route) : route;
}

let styleAdded = false;
function addStyle() {
  if (styleAdded) return;
  styleAdded = true;
  const style = document.createElement("style");
  style.dataset.dreamedit3d = "views";
  style.textContent = `
.dreamedit3d-views { display: flex; flex-direction: column; gap: 4px; width: 100%; height: 100%; box-sizing: border-box;
  padding: 2px; overflow: hidden; font: 11px sans-serif; color: var(--input-text, #ddd); }
.dreamedit3d-grid { display: grid; grid-template-columns: 1fr 1fr; grid-template-rows: 1fr 1fr; gap: 3px;
  width: 100%; aspect-ratio: 1 / 1; flex: 0 1 auto; min-height: 0; }
.dreamedit3d-cell { position: relative; overflow: hidden; background: #222; border-radius: 3px; min-width: 0; min-height: 0; }
.dreamedit3d-cell img { position: absolute; display: block; }
.dreamedit3d-cell img.dreamedit3d-whole { left: 0; top: 0; width: 100%; height: 100%; object-fit: contain; }
.dreamedit3d-cell img.dreamedit3d-quadrant { width: 200%; height: 200%; object-fit: fill; }
.dreamedit3d-cell span { position: absolute; left: 3px; bottom: 2px; padding: 0 3px; border-radius: 2px;
  background: rgba(0,0,0,0.55); color: #eee; font-size: 10px; pointer-events: none; }
.dreamedit3d-status { flex: 0 0 auto; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; opacity: 0.85; }
.dreamedit3d-views.dreamedit3d-empty .dreamedit3d-grid { display: none; }
.dreamedit3d-views.dreamedit3d-empty .dreamedit3d-status { opacity: 0.5; font-style: italic; }
`;
  document.head.appendChild(style);
}

// ---------------------------------------------------------------------------------------------- per-node state
// node.dreamedit3d = { el, cells: [{cell, img}], widget, source, urls, blobUrl, status, images: [Image] (canvas mode) }

function stateOf(node) {
  if (!node.dreamedit3d) node.dreamedit3d = { source: null, urls: [], blobUrl: null, status: "", images: [] };
  return node.dreamedit3d;
}

function buildGrid(node) {
  const state = stateOf(node);
  if (state.el || state.canvasMode) return state;
  if (typeof node.addDOMWidget !== "function") {
    state.canvasMode = true; // old frontend: draw on the node canvas (onDrawForeground below)
    state.empty = true;
    return state;
  }
  addStyle();
  const el = document.createElement("div");
  el.className = "dreamedit3d-views dreamedit3d-empty";
  el.dataset.dreamedit3dNode = String(node.id);
  const grid = document.createElement("div");
  grid.className = "dreamedit3d-grid";
  state.cells = VIEW_NAMES.map((name, i) => {
    const cell = document.createElement("div");
    cell.className = "dreamedit3d-cell";
    cell.dataset.view = name;
    const img = document.createElement("img");
    img.alt = name;
    img.draggable = false;
    img.style.visibility = "hidden";
    img.addEventListener("load", () => { img.style.visibility = "visible"; });
    img.addEventListener("error", () => { img.style.visibility = "hidden"; });
    const label = document.createElement("span");
    label.textContent = name;
    cell.append(img, label);
    grid.appendChild(cell);
    return { cell, img, index: i };
  });
  const status = document.createElement("div");
  status.className = "dreamedit3d-status";
  status.textContent = EMPTY_HINT;
  el.append(grid, status);
  state.el = el;
  state.statusEl = status;
  state.empty = true;
  const gridHeight = () => (state.empty ? EMPTY_HEIGHT : Math.max(MIN_GRID, (node.size?.[0] ?? MIN_GRID) - 20) + 18);
  // Added when the node is created (not on its first output): the Vue node renderer ("Nodes 2.0") only mounts DOM
  // widgets that exist when it first draws the node. Until the node runs it is one line of hint text.
  const widget = node.addDOMWidget(WIDGET_NAME, "dreamedit3d_views", el, {
    serialize: false, // not a value: never written into widgets_values or the prompt
    hideOnZoom: false,
    getMinHeight: gridHeight,
    getMaxHeight: () => (state.empty ? EMPTY_HEIGHT : undefined),
  });
  if (widget) widget.serialize = false;
  state.widget = widget;
  return state;
}

/** Leave the empty state: show the grid and grow the node so it fits (only ever grows it). */
function reveal(node) {
  const state = stateOf(node);
  if (!state.empty) return;
  state.empty = false;
  if (state.el) {
    state.el.classList.remove("dreamedit3d-empty");
    if (state.status === "" && state.statusEl) state.statusEl.textContent = "";
  }
  if (hasSize(node) && typeof node.setSize === "function") {
    const width = Math.max(node.size[0], MIN_GRID + 40);
    const computed = typeof node.computeSize === "function" ? node.computeSize([width, node.size[1]]) : node.size;
    const extra = state.canvasMode ? Math.min(width - 10, MIN_GRID * 2) + 10 : 0; // room for the drawn grid
    node.setSize([width, Math.max(node.size[1], computed[1] + extra)]);
  }
}

function removeCorePreview(node) {
  if (!Array.isArray(node.widgets)) return;
  const i = node.widgets.findIndex((w) => w?.name === CORE_PREVIEW_WIDGET);
  if (i > -1) {
    node.widgets[i].onRemove?.();
    node.widgets.splice(i, 1);
  }
  node.imgs = undefined;
}

function markDirty(node) {
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

function setStatus(node, text) {
  const state = stateOf(node);
  state.status = text ?? "";
  if (state.statusEl) state.statusEl.textContent = state.status || (state.empty ? EMPTY_HINT : "");
}

function setCanvasImages(state, sources, quadrant) {
  state.images = sources.map((src) => {
    if (!src) return null;
    const img = new Image();
    img.src = src;
    return img;
  });
  state.quadrant = quadrant;
}

/** Four view images from an executed output (``items``: [{filename, subfolder, type}], view order). */
function showViews(node, items) {
  const urls = items.slice(0, 4).map(viewUrl);
  if (!urls.some(Boolean)) return false;
  const state = buildGrid(node);
  releaseBlob(state);
  state.source = "views";
  state.urls = urls;
  state.extra = Math.max(0, items.length - 4);
  if (state.cells) {
    state.cells.forEach(({ img }, i) => {
      img.className = "dreamedit3d-whole";
      img.style.left = img.style.top = "";
      img.style.visibility = "hidden";
      if (urls[i]) img.src = urls[i];
      else img.removeAttribute("src");
    });
  } else {
    setCanvasImages(state, urls, false);
  }
  reveal(node);
  removeCorePreview(node);
  markDirty(node);
  return true;
}

/** One progress preview (a 2x2 grid picture of the four views): each cell shows its quadrant. */
function showPreview(node, blob) {
  if (!(blob instanceof Blob) || typeof URL?.createObjectURL !== "function") return;
  const state = buildGrid(node);
  releaseBlob(state);
  const url = URL.createObjectURL(blob);
  state.blobUrl = url;
  state.source = "preview";
  state.urls = [url, url, url, url];
  if (state.cells) {
    state.cells.forEach(({ img }, i) => {
      img.className = "dreamedit3d-quadrant";
      img.style.left = i % 2 ? "-100%" : "0";
      img.style.top = i >= 2 ? "-100%" : "0";
      img.src = url;
    });
  } else {
    setCanvasImages(state, [url], true);
  }
  reveal(node);
  removeCorePreview(node);
  markDirty(node);
}

function releaseBlob(state) {
  if (state.blobUrl) {
    const old = state.blobUrl;
    state.blobUrl = null;
    // revoke after the next images have had a chance to replace it
    setTimeout(() => URL.revokeObjectURL(old), 1000);
  }
}

function onExecutedOutput(node, output) {
  if (!output || typeof output !== "object") return;
  const images = Array.isArray(output.images) ? output.images.filter((i) => i && i.filename) : [];
  if (images.length) showViews(node, images);
  const text = Array.isArray(output.text) ? output.text.filter((t) => typeof t === "string") : [];
  const extra = images.length > 4 ? ` (first 4 of ${images.length} images)` : "";
  if (text.length || images.length) {
    // the node's own text (training: the last loss) replaces the "step n/N" line; views alone clear it
    buildGrid(node);
    setStatus(node, text.join(" · ") + extra);
  }
}

// ---------------------------------------------------------------------------------------------- canvas fallback
function drawOnCanvas(node, ctx) {
  const state = node.dreamedit3d;
  if (!state?.canvasMode || !state.images?.length || !hasSize(node)) return;
  const side = Math.min(node.size[0] - 10, MIN_GRID * 2);
  const top = node.size[1] - side - 5;
  if (top < 0 || side <= 0) return;
  const half = side / 2;
  const left = (node.size[0] - side) / 2;
  for (let i = 0; i < 4; i++) {
    const x = left + (i % 2) * half;
    const y = top + (i >= 2 ? half : 0);
    const img = state.quadrant ? state.images[0] : state.images[i];
    if (!img || !img.complete || !img.naturalWidth) continue;
    if (state.quadrant) {
      const w = img.naturalWidth / 2;
      const h = img.naturalHeight / 2;
      ctx.drawImage(img, (i % 2) * w, (i >= 2 ? 1 : 0) * h, w, h, x + 1, y + 1, half - 2, half - 2);
    } else {
      ctx.drawImage(img, x + 1, y + 1, half - 2, half - 2);
    }
  }
}

// ---------------------------------------------------------------------------------------------- node lookup
function nodeByExecutionId(id) {
  if (id === null || id === undefined || !app.graph) return null;
  const parts = String(id).split(":");
  let graph = app.graph;
  let node = null;
  for (const part of parts) {
    node = graph?.getNodeById?.(isNaN(+part) ? part : +part) ?? graph?.getNodeById?.(part) ?? null;
    if (!node) return null;
    graph = node.subgraph ?? null;
  }
  return node;
}

let sawPreviewMetadata = false;
let runningNodeId = null;

function onPreview(nodeId, blob) {
  const node = nodeByExecutionId(nodeId);
  if (node && isOurs(node)) showPreview(node, blob);
}

// ---------------------------------------------------------------------------------------------- extension
app.registerExtension({
  name: EXTENSION,

  async setup() {
    if (typeof api?.addEventListener !== "function") return;
    api.addEventListener("b_preview_with_metadata", (event) => {
      try {
        const detail = event?.detail;
        if (!detail) return;
        sawPreviewMetadata = true;
        onPreview(detail.displayNodeId ?? detail.nodeId, detail.blob);
      } catch (err) {
        console.warn(`[${EXTENSION}] preview not shown:`, err);
      }
    });
    api.addEventListener("b_preview", (event) => {
      try {
        if (!sawPreviewMetadata && runningNodeId !== null) onPreview(runningNodeId, event?.detail);
      } catch (err) {
        console.warn(`[${EXTENSION}] preview not shown:`, err);
      }
    });
    api.addEventListener("executing", (event) => {
      const d = event?.detail;
      runningNodeId = d && typeof d === "object" ? d.display_node ?? d.node ?? null : d ?? null;
    });
    api.addEventListener("progress", (event) => {
      try {
        const d = event?.detail;
        if (!d) return;
        const node = nodeByExecutionId(d.node);
        if (!node || !isOurs(node)) return;
        setStatus(node, `step ${d.value}/${d.max}`);
      } catch (err) {
        console.warn(`[${EXTENSION}] progress not shown:`, err);
      }
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!GRID_NODES.has(nodeData?.name)) return;
    const proto = nodeType.prototype;

    const onNodeCreated = proto.onNodeCreated;
    proto.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      try {
        buildGrid(this);
      } catch (err) {
        console.warn(`[${EXTENSION}] no view grid on this node:`, err);
      }
      return r;
    };

    const onExecuted = proto.onExecuted;
    proto.onExecuted = function (output) {
      const r = onExecuted?.apply(this, arguments);
      try {
        onExecutedOutput(this, output);
      } catch (err) {
        console.warn(`[${EXTENSION}] views not shown:`, err);
      }
      return r;
    };

    // ComfyUI draws its own image preview from onDrawBackground; once our grid shows the views, skip it.
    const onDrawBackground = proto.onDrawBackground;
    proto.onDrawBackground = function (ctx) {
      if (this.dreamedit3d?.source) {
        removeCorePreview(this);
        return undefined;
      }
      return onDrawBackground?.apply(this, arguments);
    };

    const onDrawForeground = proto.onDrawForeground;
    proto.onDrawForeground = function (ctx) {
      const r = onDrawForeground?.apply(this, arguments);
      if (this.dreamedit3d?.canvasMode && !this.flags?.collapsed) drawOnCanvas(this, ctx);
      return r;
    };

    const onRemoved = proto.onRemoved;
    proto.onRemoved = function () {
      if (this.dreamedit3d) releaseBlob(this.dreamedit3d);
      return onRemoved?.apply(this, arguments);
    };
  },
});
