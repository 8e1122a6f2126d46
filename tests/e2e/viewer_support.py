"""The OHIF Viewer as a radiologist meets it, for the viewer tests: the prebuilt viewer of the npm package
``@ohif/app`` (installed by ``deploy/install-test-peers.sh`` into ``.test-peers/ohif/dist``) served from a
local HTTP server that also forwards ``/dicom-web/`` to a real Orthanc with its DICOMweb plugin (Debian
``orthanc-dicomweb``), so that the viewer and its data share one origin (no CORS); and Debian's headless
Chromium (``tests.support.browser``) with WebGL.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.browser import WEBGL_FLAGS, chromium, require_chromium
from tests.support.orthanc import Orthanc
from tests.support.paths import ROOT

OHIF_DIST = ROOT / ".test-peers" / "ohif" / "dist"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def require_viewer_peers() -> None:
    """Fail with what to install when a peer of the viewer test is missing."""
    missing = []
    if not (OHIF_DIST / "index.html").is_file():
        missing.append(f"OHIF Viewer at {OHIF_DIST} (run: sh deploy/install-test-peers.sh)")
    if not DICOMWEB_PLUGIN.is_file():
        missing.append(f"Orthanc DICOMweb plugin {DICOMWEB_PLUGIN} (apt-get install orthanc-dicomweb)")
    if missing:
        raise AssertionError("viewer test peers missing: " + "; ".join(missing))
    require_chromium()


def enable_dicomweb(orthanc: Orthanc) -> None:
    """Load Orthanc's DICOMweb plugin (call before ``start``)."""
    config = json.loads(orthanc.config_path.read_text(encoding="utf-8"))
    config["Plugins"] = [str(DICOMWEB_PLUGIN)]
    config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False}
    orthanc.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def app_config(data_source_root: str) -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source at ``data_source_root`` (same origin)."""
    data_source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test)",
            "name": "orthanc",
            "wadoUriRoot": data_source_root,
            "qidoRoot": data_source_root,
            "wadoRoot": data_source_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [data_source],
    }
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files of the OHIF dist with the single-page-app fallback, ``/app-config.js`` generated, and
    ``/dicom-web/...`` forwarded to Orthanc."""

    server: _ViewerHTTPServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(OHIF_DIST), **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        with self.server.log_lock:
            self.server.log.append(format % args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/dicom-web/"):
            self._forward()
            return
        if path == "/app-config.js":
            body = self.server.app_config.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path in ("/sw.js", "/init-service-worker.js"):
            self.send_error(404)  # no service worker: every request reaches this server
            return
        if not (OHIF_DIST / path.lstrip("/")).is_file():
            self.path = "/index.html"  # routes of the single-page app (/viewer?..., /segmentation?...)
        super().do_GET()

    def _forward(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
        try:
            connection.request("GET", self.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ViewerHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, orthanc_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.orthanc_port = orthanc_port
        self.app_config = app_config(f"http://127.0.0.1:{self.server_address[1]}/dicom-web")
        self.log: list[str] = []
        self.log_lock = threading.Lock()


@contextmanager
def viewer_server(orthanc: Orthanc) -> Iterator[str]:
    """Serve OHIF for ``orthanc`` on a loopback port; yields the base URL."""
    server = _ViewerHTTPServer(orthanc.http_port)
    thread = threading.Thread(target=server.serve_forever, name="ohif-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@contextmanager
def viewer_browser(profile: Path) -> Iterator[Any]:
    """Headless Chromium with WebGL (ANGLE's software renderer), which OHIF's cornerstone3D needs."""
    with chromium(profile, extra_flags=WEBGL_FLAGS) as driver:
        yield driver


#: JavaScript run in the page: OHIF exposes its services and cornerstone3D on ``window`` (``window.services``,
#: ``window.cornerstone``, ``window.cornerstoneTools``).
_JS_DISPLAY_SETS = """
const s = window.services;
if (!s || !s.displaySetService) { return null; }
return s.displaySetService.getActiveDisplaySets().map(d => ({
  uid: d.displaySetInstanceUID, modality: d.Modality, series: d.SeriesInstanceUID}));
"""

#: The first (in these tests: the only) cornerstone3D viewport.
_JS_VIEWPORT = (
    "const viewport = window.cornerstone.getRenderingEngines().flatMap(e => e.getViewports())[0];\n"
)

#: True once the SEG is loaded ("hydrated") onto the viewport: OHIF then shows the SEG's referenced source
#: series in it with the segmentation as a labelmap representation. (Before the user confirms, the viewport
#: shows the SEG display set itself as a preview.)
_JS_SEG_LOADED = (
    _JS_VIEWPORT
    + """
const s = window.services;
const displaySet = s.displaySetService.getDisplaySetByUID(arguments[0]);
if (!displaySet || !viewport || !s.segmentationService.getSegmentation(arguments[0])) { return false; }
const shown = s.viewportGridService.getState().viewports.get(viewport.id);
const uids = shown ? shown.displaySetInstanceUIDs : [];
const source = displaySet.referencedDisplaySetInstanceUID;
if (uids.includes(arguments[0]) || !uids.includes(source)) { return false; }
const reps = window.cornerstoneTools.segmentation.state.getSegmentationRepresentations(viewport.id) || [];
return reps.some(r => r.segmentationId === arguments[0] && r.type === 'Labelmap' && r.visible);
"""
)

_JS_SHOW_INSTANCE = (
    _JS_VIEWPORT
    + """
const index = viewport.getImageIds().findIndex(id => id.includes('/instances/' + arguments[0] + '/'));
if (index >= 0) { viewport.setImageIdIndex(index); }
return index;
"""
)

#: Where the viewport's canvas lies on the page, its size in canvas pixels, and how CSS pixels on it map to
#: patient coordinates (mm, LPS): the viewer's own transform of the image it shows.
_JS_CANVAS = (
    _JS_VIEWPORT
    + """
const rect = viewport.canvas.getBoundingClientRect();
const toWorld = p => Array.from(viewport.canvasToWorld(p));
return {index: viewport.getCurrentImageIdIndex(), imageId: viewport.getCurrentImageId(),
        rect: [rect.left, rect.top, rect.width, rect.height],
        size: [viewport.canvas.width, viewport.canvas.height],
        origin: toWorld([0, 0]), dx: toWorld([1, 0]), dy: toWorld([0, 1]),
        ratio: window.devicePixelRatio};
"""
)

#: The pixels cornerstone3D rendered into the viewport's canvas (image and segmentation, without the text
#: and orientation markers that OHIF lays over it in the page) as a PNG data URL.
_JS_CANVAS_PIXELS = _JS_VIEWPORT + "return viewport.canvas.toDataURL('image/png');\n"


class OhifPage:
    """The OHIF Viewer in a browser, driven as a user would (study URL, double-click on a SEG thumbnail,
    confirm), with its state read through the objects OHIF exposes on ``window``."""

    def __init__(self, driver: Any, base_url: str, timeout_s: float = 180) -> None:
        self.driver = driver
        self.base_url = base_url
        self.timeout_s = timeout_s

    def wait(self, what: str, condition: Any) -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, self.timeout_s, poll_frequency=0.25).until(condition)
        except TimeoutException:
            raise AssertionError(
                f"OHIF: timed out after {self.timeout_s:g} s waiting for {what}; browser log:\n"
                + "\n".join(e["message"][:300] for e in self.driver.get_log("browser")[-20:])
            ) from None

    def open_study(self, study_uid: str, series_uids: set[str]) -> dict[str, str]:
        """Open the study; wait until OHIF lists display sets of all ``series_uids``; returns series UID ->
        display set UID."""
        self.driver.get(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}")
        # No onboarding tour over the viewport (OHIF remembers shown tours in the local storage).
        self.driver.execute_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")

        def listed(driver: Any) -> dict[str, str] | None:
            sets = driver.execute_script(_JS_DISPLAY_SETS) or []
            found = {d["series"]: d["uid"] for d in sets}
            return found if series_uids <= set(found) else None

        found: dict[str, str] = self.wait(f"display sets of series {sorted(series_uids)}", listed)
        return found

    def load_seg(self, display_set_uid: str) -> None:
        """Double-click the SEG's thumbnail, confirm 'open this Segmentation' and wait until OHIF has loaded
        it (hydrated) onto the viewport."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        thumbnail = self.wait(
            "the SEG thumbnail",
            lambda d: (d.find_elements(By.ID, f"thumbnail-{display_set_uid}") or [None])[0],
        )
        ActionChains(self.driver).double_click(thumbnail).perform()

        def confirmed_or_loaded(driver: Any) -> bool:
            if driver.execute_script(_JS_SEG_LOADED, display_set_uid):
                return True
            for button in driver.find_elements(By.XPATH, "//button[normalize-space(.)='Yes']"):
                if button.is_displayed():
                    button.click()
            return False

        self.wait("the SEG to be loaded onto the viewport", confirmed_or_loaded)

    def show_instance(self, sop_instance_uid: str) -> dict[str, Any]:
        """Scroll the viewport to the source image ``sop_instance_uid``; wait until the viewport shows it and
        its rendering is stable; returns the canvas geometry (see ``_JS_CANVAS``)."""
        index = self.driver.execute_script(_JS_SHOW_INSTANCE, sop_instance_uid)
        assert index >= 0, f"OHIF's viewport has no image of instance {sop_instance_uid}"

        def shown(driver: Any) -> dict[str, Any] | None:
            canvas: dict[str, Any] = driver.execute_script(_JS_CANVAS)
            if canvas["index"] != index or f"/instances/{sop_instance_uid}/" not in canvas["imageId"]:
                return None
            return canvas

        canvas: dict[str, Any] = self.wait(f"image {sop_instance_uid} on the viewport", shown)
        last: list[str] = []

        def stable(driver: Any) -> bool:
            # The rendering is done when the canvas holds the same pixels twice in a row.
            pixels = str(driver.execute_script(_JS_CANVAS_PIXELS))
            same = bool(last) and last[-1] == pixels
            last.append(pixels)
            return same

        self.wait("a stable rendering of the viewport", stable)
        self.canvas_png = base64.b64decode(last[-1].split(",", 1)[1])
        self.screenshot = self.driver.get_screenshot_as_png()
        return canvas
