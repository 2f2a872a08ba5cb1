/**
 * Rexec for JupyterLab: registers the plugins; the model, view and kernel client live in
 * their own modules.
 */

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar, showPopup } from '@jupyterlab/statusbar';
import { Signal } from '@lumino/signaling';

import { WorkerStatusModel } from './model';
import { RexecDetailsPanel, RexecStatusItem, WorkerLogView } from './view';

const PLUGIN_ID = 'rexec-jupyterlab:status';

/** The worker status item in the status bar, for the notebook in focus. */
const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: "Shows the Rexec remote worker's state in the status bar.",
  autoStart: true,
  requires: [INotebookTracker, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    statusBar: IStatusBar
  ) => {
    const models = new Map<NotebookPanel, WorkerStatusModel>();
    const activeChanged = new Signal<object, void>(statusPlugin);

    const openLog = (model: WorkerStatusModel) => {
      const widget = new MainAreaWidget({ content: new WorkerLogView(model) });
      widget.id = `rexec-log-${Date.now()}`;
      widget.title.label = 'Rexec worker log';
      widget.title.closable = true;
      app.shell.add(widget, 'main', { mode: 'split-right' });
      app.shell.activateById(widget.id);
    };

    const item = new RexecStatusItem(anchor => {
      const model = anchor.model;
      if (model) {
        showPopup({
          body: new RexecDetailsPanel(model, { openLog }),
          anchor,
          align: 'left',
          hasDynamicSize: true
        });
      }
    });

    const showCurrent = () => {
      const panel = tracker.currentWidget;
      item.model = panel ? (models.get(panel) ?? null) : null;
      activeChanged.emit();
    };

    tracker.widgetAdded.connect((_, panel) => {
      const model = new WorkerStatusModel(panel.sessionContext);
      models.set(panel, model);
      model.changed.connect(() => {
        if (tracker.currentWidget === panel) {
          activeChanged.emit();
        }
      });
      panel.disposed.connect(() => {
        models.delete(panel);
        model.dispose();
        showCurrent();
      });
      showCurrent();
    });
    tracker.currentChanged.connect(showCurrent);

    statusBar.registerStatusItem(PLUGIN_ID, {
      item,
      align: 'left',
      rank: 4,
      isActive: () => item.model?.available ?? false,
      activeStateChanged: activeChanged
    });
  }
};

export default [statusPlugin];
