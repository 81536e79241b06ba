// The browser UI: three pages in one document, switched without reloading.
// `/` is the client page (your tasks), `/admin` the admin page, `/cluster` the live
// cluster view. The web process serves this same document at each of those paths.

import "./styles.css";
import { ClientPage } from "./pages/client";
import { AdminPage } from "./pages/admin";
import { ClusterPage } from "./pages/cluster";

export interface Page {
  readonly name: string;
  readonly title: string;
  mount(root: HTMLElement): void;
  unmount(): void;
}

const pages: Record<string, Page> = {
  "/": new ClientPage(),
  "/admin": new AdminPage(),
  "/cluster": new ClusterPage(),
};

const root = document.getElementById("main") as HTMLElement;
let current: Page | null = null;

function pageFor(path: string): Page {
  return pages[path.replace(/\/+$/, "") || "/"] ?? pages["/"];
}

function show(path: string, focus: boolean): void {
  const page = pageFor(path);
  if (page === current) return;
  current?.unmount();
  // A fresh element per visit: lit keeps its rendering state on the element it renders
  // into, so reusing one after clearing it would render into nodes no longer there.
  const host = document.createElement("div");
  host.className = "page";
  root.replaceChildren(host);
  current = page;
  document.title = `${page.title} · taskring`;
  for (const link of document.querySelectorAll<HTMLAnchorElement>(".nav a")) {
    if (link.dataset.page === page.name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  page.mount(host);
  // After a navigation, start keyboard and screen reader users at the new content.
  if (focus) root.focus({ preventScroll: true });
}

document.addEventListener("click", (event) => {
  const link = (event.target as Element | null)?.closest<HTMLAnchorElement>("a[data-nav]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  if (link.pathname !== location.pathname) history.pushState(null, "", link.pathname);
  show(link.pathname, true);
});

window.addEventListener("popstate", () => show(location.pathname, true));
show(location.pathname, false);
