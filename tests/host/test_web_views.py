"""The pack's frontend extension (web/dreamedit3d.js) in a real headless Chromium against the real host's frontend.

The page is ComfyUI's own frontend (1.32.9 on the 0.3.75 host) served by the session's server (tests/host/conftest.py).
We check that it loads our script from /extensions/dreamedit3d/ and registers "DreamEdit3D.views" without console
errors from our code, then load a small graph (render -> masks -> 2 training steps -> 4-step sample) into the page,
queue it from the page (the frontend's own graph-to-prompt and POST /prompt), and check that the 2x2 grid appears on
every node that shows views, with the four /view images really loaded, and that the training node's progress previews
reached its grid while it trained.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from _browser import frontend_page
from _host import load_api_workflow
from comfy_host import PACK_FOLDER  # tools/ is on sys.path once _host is imported

pytestmark = pytest.mark.host

SCRIPT = f"/extensions/{PACK_FOLDER}/dreamedit3d.js"
GRID_NODE_IDS = {"2": "DreamEdit3D_OrthoRender", "3": "DreamEdit3D_ComponentMask",
                 "4": "DreamEdit3D_MultiViewTextualInversion", "10": "DreamEdit3D_MVSample"}
OUR_FRAGMENTS = (SCRIPT, "DreamEdit3D.views")  # our script in a message or its stack, or our extension's log prefix


def small_graph(run_name: str) -> dict:
    """The full-edit twin cut down to render -> masks -> textual inversion -> compose -> sample (no fine-tune, no lift)."""
    full = load_api_workflow("full_edit")
    keep = {"1", "2", "3", "4", "7", "8", "9", "10", "11", "15", "16"}
    graph = {nid: json.loads(json.dumps(node)) for nid, node in full.items() if nid in keep}
    graph["4"]["inputs"].update(steps=2, run_name=run_name, resume=False, checkpoint_every=1000, preview_every=1)
    for nid in ("7", "9", "10"):
        for name, value in graph[nid]["inputs"].items():
            if isinstance(value, list) and value[0] == "5":  # fine-tune's model/tokens -> textual inversion's
                graph[nid]["inputs"][name] = ["4", value[1]]
            elif isinstance(value, list) and value[0] == "6":  # SaveTokens' pass-through tokens -> textual inversion's
                graph[nid]["inputs"][name] = ["4", 1]
    for nid in ("11", "16"):  # previews only: nothing written to output/
        graph[nid] = {"class_type": "PreviewImage", "inputs": {"images": graph[nid]["inputs"]["images"]}}
    return graph


def our_errors(page) -> list:
    """Errors from our script, and the warnings it logs when it catches one of its own failures ("[DreamEdit3D.views] ...")."""
    return [e for e in page.console
            if (e.level == "error" and any(e.mentions(f) for f in OUR_FRAGMENTS))
            or (e.level == "warning" and e.text.startswith("[DreamEdit3D.views]"))]


@pytest.fixture(scope="module")
def page(comfy_host):
    with frontend_page(comfy_host.url + "/") as page:
        yield page


def test_page_loads_our_extension_without_console_errors(page):
    assert any(url.split("?")[0].endswith(SCRIPT) for url in page.requests), \
        f"{SCRIPT} was never requested: {[u for u in page.requests if '/extensions/' in u]}"
    assert not [f for f in page.failed_requests if PACK_FOLDER in f[0]], page.failed_requests
    names = page.wait_for("(() => { const n = app.extensions.map(e => e.name);"
                          " return n.includes('DreamEdit3D.views') ? n : null; })()", timeout=20)
    assert "DreamEdit3D.views" in names
    # the default graph has none of our nodes: nothing of ours may complain
    assert our_errors(page) == [], our_errors(page)


def test_missing_or_empty_outputs_are_ignored(page):
    """onExecuted with no output, no images or junk items neither throws nor logs an error; the grid stays empty."""
    result = page.evaluate("""(() => {
        const node = LiteGraph.createNode("DreamEdit3D_OrthoRender");
        app.graph.add(node);
        const height = node.size[1];
        for (const out of [undefined, null, {}, {images: []}, {images: [null, {subfolder: "x"}]}, {text: "not a list"}])
            node.onExecuted(out);
        const s = node.dreamedit3d;
        const result = {grid: !!s?.el, empty: s?.empty, source: s?.source ?? null, grew: node.size[1] > height,
                        hint: s?.el?.querySelector(".dreamedit3d-status")?.textContent,
                        gridShown: s?.el ? !s.el.classList.contains("dreamedit3d-empty") : null};
        app.graph.remove(node);
        return result;
    })()""")
    assert result == {"grid": True, "empty": True, "source": None, "grew": False, "gridShown": False,
                      "hint": "the four views appear here after a run"}, result
    assert our_errors(page) == [], our_errors(page)


@pytest.fixture(scope="module")
def web_run(page, comfy_host):
    """Load the small graph into the page, queue it from the page, wait for the end; the grids' state per node id."""
    run_name = f"web-{uuid.uuid4().hex[:8]}"
    graph = small_graph(run_name)
    loaded = page.evaluate(f"""(async () => {{
        await app.loadApiJson({json.dumps(graph)}, "dreamedit3d-web-test");
        const ids = {json.dumps(sorted(GRID_NODE_IDS))};
        window.__dreamedit3dPreviews = {{}};
        window.__dreamedit3dDone = null;
        app.api.addEventListener("b_preview_with_metadata", (e) => {{
            const id = String(e.detail.displayNodeId);
            window.__dreamedit3dPreviews[id] = (window.__dreamedit3dPreviews[id] || 0) + 1;
        }});
        // which blob URL the training node's grid shows while it trains (sampled on every preview)
        window.__dreamedit3dTrainingGrid = [];
        app.api.addEventListener("b_preview_with_metadata", (e) => setTimeout(() => {{
            const n = app.graph.getNodeById(4);
            if (String(e.detail.displayNodeId) === "4" && n?.dreamedit3d)
                window.__dreamedit3dTrainingGrid.push(n.dreamedit3d.source + " " + (n.dreamedit3d.urls[0] || "").slice(0, 5));
        }}, 0));
        for (const ev of ["execution_success", "execution_error", "execution_interrupted"])
            app.api.addEventListener(ev, (e) => {{ window.__dreamedit3dDone = ev + " " + JSON.stringify(e.detail).slice(0, 2000); }});
        return ids.map(id => app.graph.getNodeById(+id)?.comfyClass);
    }})()""")
    assert loaded == [GRID_NODE_IDS[i] for i in sorted(GRID_NODE_IDS)], loaded

    page.evaluate("app.queuePrompt(0, 1).then(() => true)")
    done = page.wait_for("window.__dreamedit3dDone", timeout=240, interval=0.5)
    assert done.startswith("execution_success"), (done, comfy_host.log_tail())

    # every grid node shows a 2x2 grid in the DOM, and views' images are loaded from /view
    state = page.wait_for(f"""(async () => {{
        const frame = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        const out = {{}};
        for (const id of {json.dumps(sorted(GRID_NODE_IDS))}) {{
            const node = app.graph.getNodeById(+id);
            const s = node?.dreamedit3d;
            if (!s?.el || !document.body.contains(s.el)) return null;
            const cells = [...s.el.querySelectorAll(".dreamedit3d-grid > .dreamedit3d-cell")];
            const imgs = cells.map(c => c.querySelector("img"));
            if (s.source === "views" && !imgs.every(i => i.complete && i.naturalWidth > 0)) return null;
            app.canvas.centerOnNode(node);  // DOM widgets of nodes outside the viewport are hidden
            app.canvas.setDirty(true, true);
            await frame();
            const box = s.el.querySelector(".dreamedit3d-grid").getBoundingClientRect();
            out[id] = {{source: s.source, views: cells.map(c => c.dataset.view),
                       sizes: imgs.map(i => [i.naturalWidth, i.naturalHeight]), srcs: imgs.map(i => i.src),
                       columns: getComputedStyle(s.el.querySelector(".dreamedit3d-grid")).gridTemplateColumns.split(" ").length,
                       box: [Math.round(box.width), Math.round(box.height)],
                       status: s.statusEl?.textContent ?? "",
                       corePreview: (node.widgets || []).some(w => w.name === "$$canvas-image-preview"),
                       widgetsValues: node.serialize().widgets_values?.length ?? 0,
                       otherWidgets: node.widgets.filter(w => w.name !== "dreamedit3d_views").length}};
        }}
        return out;
    }})()""", timeout=60, interval=0.5)
    return state


def test_grid_of_four_views_appears_on_our_nodes_after_a_run(page, web_run):
    state = web_run
    if os.environ.get("DREAMEDIT3D_SCREENSHOTS"):  # a picture of each grid, for eyes
        # a fresh profile opens the templates dialog over the canvas
        page.evaluate("document.querySelectorAll('.p-dialog-mask').forEach(m => m.remove()); 1")
        for nid in sorted(GRID_NODE_IDS):
            page.evaluate(f"app.canvas.centerOnNode(app.graph.getNodeById({nid})); app.canvas.setDirty(true, true); 1")
            page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))")
            page.screenshot(Path(os.environ["DREAMEDIT3D_SCREENSHOTS"]) / f"web-node-{nid}.png")

    for nid in ("2", "3", "10"):  # OrthoRender, ComponentMask, MVSample: their four preview images
        s = state[nid]
        assert s["source"] == "views", (nid, s)
        assert s["views"] == ["front", "right", "back", "left"] and s["columns"] == 2, (nid, s)
        assert all(w == 64 and h == 64 for w, h in s["sizes"]), (nid, s["sizes"])
        assert all("/view?" in u and "type=temp" in u for u in s["srcs"]), (nid, s["srcs"])
        assert len(set(s["srcs"])) == 4, f"four different views on node {nid}: {s['srcs']}"
        assert s["box"][0] > 100 and s["box"][1] > 100, (nid, s["box"])
        assert not s["corePreview"], f"ComfyUI's own preview is shown beside our grid on node {nid}"

    # the training node's grid took its progress previews (2x2 pictures) while it trained, and shows its loss
    previews = page.evaluate("window.__dreamedit3dPreviews")
    assert previews.get("4", 0) >= 2, previews
    trained = page.evaluate("window.__dreamedit3dTrainingGrid")
    # the last step's preview and the node's "executed" output arrive together: when the sample is taken after the
    # output (a race of the two websocket messages), the grid already shows the returned views, as it should then
    assert trained and trained[0] == "preview blob:" and all(t == "preview blob:" for t in trained[:-1]), trained
    assert trained[-1] in ("preview blob:", "views /api/"), trained
    # after the run the node's own output carries its last training preview, cut into the four views (so the grid
    # survives a page reload), with the loss as text
    ti = state["4"]
    assert ti["source"] == "views" and ti["views"] == ["front", "right", "back", "left"], ti
    assert len(set(ti["srcs"])) == 4 and all(w > 0 and w == h for w, h in ti["sizes"]), ti
    assert "loss" in ti["status"], ti["status"]

    # the grid is not a value: neither saved workflows (widgets_values) nor the prompt carry it
    assert all(s["widgetsValues"] == s["otherWidgets"] for s in state.values()), state
    prompt_inputs = page.evaluate("app.graphToPrompt().then(p => Object.fromEntries("
                                  "Object.entries(p.output).map(([id, n]) => [id, Object.keys(n.inputs)])))")
    assert not [nid for nid, names in prompt_inputs.items() if "dreamedit3d_views" in names], prompt_inputs

    assert our_errors(page) == [], our_errors(page)


def test_grid_also_shows_in_the_vue_node_renderer(page, web_run):
    """"Nodes 2.0" (Vue nodes, opt-in in 1.32.9) mounts our DOM widget inside the node's own element."""
    result = page.evaluate("""(async () => {
        const sleep = (ms) => new Promise(r => setTimeout(r, ms));
        const setting = app.extensionManager.setting;
        const before = setting.get("Comfy.VueNodes.Enabled");
        await setting.set("Comfy.VueNodes.Enabled", true);
        try {
            const items = app.graph.getNodeById(2).dreamedit3d.urls.map(u => {
                const q = new URL(u, location.href).searchParams;
                return {filename: q.get("filename"), subfolder: q.get("subfolder"), type: q.get("type")};
            });
            const node = LiteGraph.createNode("DreamEdit3D_OrthoRender");
            node.pos = [5000, 5000];
            app.graph.add(node);
            await sleep(300);
            node.onExecuted({images: items});
            app.canvas.centerOnNode(node);
            app.canvas.setDirty(true, true);
            const el = node.dreamedit3d.el;
            let imgs = [];
            for (let i = 0; i < 40; i++) {
                imgs = [...el.querySelectorAll("img")];
                if (el.isConnected && imgs.every(im => im.complete && im.naturalWidth > 0)) break;
                await sleep(250);
            }
            const box = el.querySelector(".dreamedit3d-grid").getBoundingClientRect();
            const host = el.closest("[data-node-id]");
            const out = {connected: el.isConnected, hostNode: host?.getAttribute("data-node-id") ?? null,
                         nodeId: String(node.id), loaded: imgs.filter(im => im.complete && im.naturalWidth > 0).length,
                         box: [Math.round(box.width), Math.round(box.height)]};
            app.graph.remove(node);
            return out;
        } finally {
            await setting.set("Comfy.VueNodes.Enabled", before ?? false);
        }
    })()""", timeout=60)
    assert result["connected"] and result["hostNode"] == result["nodeId"], result
    assert result["loaded"] == 4, result
    w, h = result["box"]
    assert w > 100 and abs(w - h) <= 0.1 * w, f"the grid is square in the Vue node: {result}"
    assert our_errors(page) == [], our_errors(page)


def test_grid_is_drawn_on_the_canvas_where_dom_widgets_are_missing(page, web_run):
    """Frontends without addDOMWidget: the four views are drawn on the node (white render background in the cells)."""
    result = page.evaluate("""(async () => {
        const sleep = (ms) => new Promise(r => setTimeout(r, ms));
        const items = app.graph.getNodeById(2).dreamedit3d.urls.map(u => {
            const q = new URL(u, location.href).searchParams;
            return {filename: q.get("filename"), subfolder: q.get("subfolder"), type: q.get("type")};
        });
        const saved = LGraphNode.prototype.addDOMWidget;
        LGraphNode.prototype.addDOMWidget = undefined;
        let node;
        try {
            node = LiteGraph.createNode("DreamEdit3D_OrthoRender");
        } finally {
            LGraphNode.prototype.addDOMWidget = saved;
        }
        node.pos = [-6000, -6000];
        app.graph.add(node);
        const height = node.size[1];
        node.onExecuted({images: items});
        const s = node.dreamedit3d;
        for (let i = 0; i < 40 && !s.images.every(im => im.complete && im.naturalWidth > 0); i++) await sleep(250);
        app.canvas.centerOnNode(node);
        app.canvas.setDirty(true, true);
        await sleep(300);
        // centre of each cell's top-left corner area (node coordinates, as drawOnCanvas lays the grid out)
        const side = Math.min(node.size[0] - 10, 320), half = side / 2;
        const left = (node.size[0] - side) / 2, top = node.size[1] - side - 5;
        const ctx = app.canvas.canvas.getContext("2d");
        const dpr = window.devicePixelRatio || 1;
        const pixels = [];
        for (let i = 0; i < 4; i++) {
            const p = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + left + (i % 2) * half + 5,
                                                           node.pos[1] + top + (i >= 2 ? half : 0) + 5]);
            pixels.push([...ctx.getImageData(Math.round(p[0] * dpr), Math.round(p[1] * dpr), 1, 1).data.slice(0, 3)]);
        }
        const out = {canvasMode: !!s.canvasMode, domWidget: !!s.el, loaded: s.images.filter(im => im.naturalWidth > 0).length,
                     grew: node.size[1] > height, pixels};
        app.graph.remove(node);
        return out;
    })()""", timeout=60)
    assert result["canvasMode"] and not result["domWidget"], result
    assert result["loaded"] == 4 and result["grew"], result
    assert all(min(px) > 230 for px in result["pixels"]), f"the renders' white background is drawn in every cell: {result}"
    assert our_errors(page) == [], our_errors(page)
