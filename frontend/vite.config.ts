// Vite builds the UI into dist/, which the web process serves (web/ui.py).
// `npm run dev` serves it with hot reload and sends the API to a running
// `taskring web` (TASKRING_WEB, default http://127.0.0.1:8000).
import { defineConfig } from "vite";

const web = process.env.TASKRING_WEB ?? "http://127.0.0.1:8000";

export default defineConfig({
  build: {
    target: "es2022",
    sourcemap: true,
    chunkSizeWarningLimit: 400,
  },
  server: {
    proxy: {
      "/api": web,
      "/taskring.admin.v1.AdminService": web,
      "/ws": { target: web.replace(/^http/, "ws"), ws: true },
    },
  },
});
